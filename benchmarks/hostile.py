#!/usr/bin/env python3
"""The hardening issue's two hostile clients against a real `rosetta serve` (tiny demo model):
a 2 MB /v1/completions body of 200,000 one-token prompts and 600,000 stop_token_ids, then a
streamed n=128 request with 20 logprobs per token whose client never reads. Prints the
answer, the server's RSS and the engine's load as they go.

    python3 benchmarks/hostile.py target/release/rosetta
"""
import json, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request
binp = sys.argv[1]
work = tempfile.mkdtemp(prefix="rosetta-hostile-")
cfg = f"""server: {{ listen: 127.0.0.1:0, stream_stall_timeout: 60 }}
cache_dir: {work}/cache
auth: {{ allow_unauthenticated: true }}
models:
  - {{ id: tiny, demo: {{ arch: qwen2, size: tiny, seed: 1 }}, licence: apache-2.0, max_context: 4096, engine: {{ kv_cache_bytes: 268435456, max_num_seqs: 128, max_num_batched_tokens: 512 }} }}
"""
open(f'{work}/c.yaml','w').write(cfg)
p = subprocess.Popen([binp,'serve','--config',f'{work}/c.yaml'], stdout=subprocess.PIPE, stderr=open(f'{work}/server.log','w'), text=True)
port = None
while port is None:
    line = p.stdout.readline()
    m = re.search(r':(\d+)', line)
    if line.startswith('listening') and m: port = int(m.group(1))
while True:
    try:
        urllib.request.urlopen(f'http://127.0.0.1:{port}/ready', timeout=2); break
    except Exception: time.sleep(0.2)
def rss():
    for l in open(f'/proc/{p.pid}/status'):
        if l.startswith('VmRSS'): return int(l.split()[1])/1024
def post(body, read=True):
    s = socket.create_connection(('127.0.0.1', port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    data = body.encode() if isinstance(body,str) else body
    s.sendall(f'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n'.encode()+data)
    if not read: return s
    out=b''
    while True:
        c=s.recv(65536)
        if not c: break
        out+=c
        if b'\r\n\r\n' in out:
            head,_,rest=out.partition(b'\r\n\r\n')
            m=re.search(rb'content-length: (\d+)', head, re.I)
            if m and len(rest)>=int(m.group(1)): break
    s.close(); return out
print(f'idle RSS: {rss():.0f} MiB')
body = '{"model":"tiny","max_tokens":1,"prompt":[' + ','.join(['[1]']*200000) + '],"stop_token_ids":[' + ','.join(['1']*600000) + ']}'
print(f'hostile body: {len(body)/1e6:.2f} MB')
t=time.time(); r=post(body); print('answer:', r.split(b'\r\n')[0].decode(), f'{(time.time()-t)*1000:.0f} ms', r[r.find(b'{"error'):][:160].decode())
print(f'RSS after it: {rss():.0f} MiB; alive: {p.poll() is None}')
chat = json.dumps({"model":"tiny","prompt":"Tell me everything.","n":128,"stream":True,"max_tokens":2000,"ignore_eos":True,"logprobs":20})
s = post(chat, read=False)
for i in range(5):
    time.sleep(4)
    load=json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/load'))['models']['tiny']
    print(f't={4*(i+1)} s: RSS {rss():.0f} MiB, running {load["running"]}, kv_blocks_used {load["kv_blocks_used"]}')
s.close()
time.sleep(1)
load=json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/load'))['models']['tiny']
print(f'client gone: RSS {rss():.0f} MiB, running {load["running"]}, kv_blocks_used {load["kv_blocks_used"]}')
p.terminate(); p.wait(); print('exit', p.returncode)
shutil.rmtree(work, ignore_errors=True)
