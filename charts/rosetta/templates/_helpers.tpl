{{/* Names and labels. */}}
{{- define "rosetta.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rosetta.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rosetta.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "rosetta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "rosetta.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "rosetta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* An engine's selector; call with (dict "root" $ "model" $model). */}}
{{- define "rosetta.engineSelector" -}}
app.kubernetes.io/name: {{ include "rosetta.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: engine
rosetta.dev/model: {{ include "rosetta.modelName" .model }}
{{- end -}}

{{/* Every engine pod of the release. */}}
{{- define "rosetta.enginesSelector" -}}
app.kubernetes.io/name: {{ include "rosetta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: engine
{{- end -}}

{{/* A model's Kubernetes name: `name`, else its id as a DNS label. */}}
{{- define "rosetta.modelName" -}}
{{- if .name -}}
{{- .name -}}
{{- else -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .id) "-" | trunc 30 | trimAll "-" -}}
{{- end -}}
{{- end -}}

{{/* An engine's objects' name; call with (dict "root" $ "model" $model). */}}
{{- define "rosetta.engineName" -}}
{{- printf "%s-engine-%s" (include "rosetta.fullname" .root | trunc 32 | trimSuffix "-") (include "rosetta.modelName" .model) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rosetta.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "rosetta.cudaImage" -}}
{{- $repo := default .Values.image.repository .Values.cudaImage.repository -}}
{{- $tag := default (printf "%s-cuda" (default .Chart.AppVersion .Values.image.tag)) .Values.cudaImage.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "rosetta.secretName" -}}
{{- default (printf "%s-secrets" (include "rosetta.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The gateway's rosetta.yaml. */}}
{{- define "rosetta.gatewayConfig" -}}
{{- $root := . -}}
{{- $config := deepCopy .Values.config -}}
{{- $server := merge (dict "listen" (printf "0.0.0.0:%v" .Values.port)) (default dict $config.server) -}}
{{- $_ := set $config "server" $server -}}
{{- $auth := merge (dict "keys_file" "/etc/rosetta/secrets/keys.yaml") (default dict $config.auth) -}}
{{- $_ := set $config "auth" $auth -}}
{{- $models := list -}}
{{- range (include "rosetta.models" $root | fromYaml).models -}}
{{- $model := dict "id" .id "licence" .licence -}}
{{- if .languages }}{{ $_ := set $model "languages" .languages }}{{ end -}}
{{- /* Every engine pod, found through the model's headless Service. */ -}}
{{- $dns := printf "%s-pods.%s.svc.%s." (include "rosetta.engineName" (dict "root" $root "model" .)) $root.Release.Namespace $root.Values.clusterDomain -}}
{{- $_ := set $model "remote" (list (dict "dns" $dns "port" (int $root.Values.port) "api_key_env" "ROSETTA_ENGINE_TOKEN" "load_path" "/load")) -}}
{{- $models = append $models $model -}}
{{- end -}}
{{- $_ := set $config "models" $models -}}
{{- toYaml $config -}}
{{- end -}}

{{/* An engine's rosetta.yaml; call with (dict "root" $ "model" $model). */}}
{{- define "rosetta.engineConfig" -}}
{{- $m := .model -}}
{{- $engine := deepCopy (default dict $m.engine) -}}
{{- if gt (int $m.gpu) 0 }}{{ $_ := set $engine "device" "cuda" }}{{ end -}}
{{- $model := dict "id" $m.id "licence" $m.licence "engine" $engine -}}
{{- if $m.path -}}
{{- $_ := set $model "path" (printf "/models/%s" $m.path) -}}
{{- else -}}
{{- $_ := set $model "demo" $m.demo -}}
{{- end -}}
{{- if $m.languages }}{{ $_ := set $model "languages" $m.languages }}{{ end -}}
{{- if and $m.dtype (ne $m.dtype "auto") }}{{ $_ := set $model "dtype" $m.dtype }}{{ end -}}
{{- if $m.maxContext }}{{ $_ := set $model "max_context" (int $m.maxContext) }}{{ end -}}
{{- if and $m.toolParser (ne $m.toolParser "auto") }}{{ $_ := set $model "tool_parser" $m.toolParser }}{{ end -}}
{{- if and $m.reasoningParser (ne $m.reasoningParser "auto") }}{{ $_ := set $model "reasoning_parser" $m.reasoningParser }}{{ end -}}
{{- if and $m.backend (ne $m.backend "native") }}{{ $_ := set $model "backend" $m.backend }}{{ end -}}
{{- if $m.isq }}{{ $_ := set $model "isq" $m.isq }}{{ end -}}
{{- if $m.gguf }}{{ $_ := set $model "gguf" $m.gguf }}{{ end -}}
{{- $server := dict "listen" (printf "0.0.0.0:%v" .root.Values.port) "shutdown_grace_seconds" .root.Values.config.server.shutdown_grace_seconds "log_format" (default "json" .root.Values.config.server.log_format) -}}
{{- $config := dict "server" $server "cache_dir" "/var/cache/rosetta" "auth" (dict "allow_unauthenticated" true) "models" (list $model) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Every model with the chart's defaults under what values give (lists in values replace
the default list whole, so each entry is completed here): `{models: [...]}` as YAML. */}}
{{- define "rosetta.models" -}}
{{- $defaults := dict
  "languages" list
  "dtype" "auto"
  "engine" dict
  "replicas" 1
  "gpu" 0
  "resources" (dict "requests" (dict "cpu" "1" "memory" "2Gi") "limits" (dict "memory" "4Gi"))
  "nodeSelector" dict
  "tolerations" list
  "affinity" dict
  "podAnnotations" dict
  "env" list
  "storage" (dict "type" "none" "sizeLimit" "4Gi")
  "startupSeconds" 600
  "podDisruptionBudget" (dict "enabled" true "maxUnavailable" 1)
  "autoscaling" (dict "enabled" false "minReplicas" 1 "maxReplicas" 4 "prometheusAddress" "http://prometheus-operated.monitoring.svc:9090" "waitingPerPod" 2 "kvCacheUsage" 0.8)
-}}
{{- $models := list -}}
{{- range .Values.models -}}
{{- $m := mergeOverwrite (deepCopy $defaults) (deepCopy .) -}}
{{- if and (not $m.path) (not $m.demo) -}}
{{- $_ := set $m "demo" (dict "arch" "llama" "size" "small" "seed" 0) -}}
{{- end -}}
{{- $models = append $models $m -}}
{{- end -}}
{{- toYaml (dict "models" $models) -}}
{{- end -}}
