//! Stop strings in streamed text.

use std::sync::Arc;

/// Finds stop strings in streamed text, holding back any tail that could still become one so
/// that a stop string spanning token boundaries never leaks into the output.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    /// Shared with every other choice of the request; empty strings never match.
    stops: Arc<[String]>,
    /// Text received but not yet released.
    pending: String,
}

/// The outcome of feeding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to release now.
    pub text: String,
    /// A stop string was found; generation ends and nothing after it is released.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Arc<[String]>) -> Self {
        Self {
            stops,
            pending: String::new(),
        }
    }

    fn stops(&self) -> impl Iterator<Item = &str> {
        self.stops
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn push(&mut self, delta: &str) -> StopCheck {
        self.pending.push_str(delta);
        if self.stops().next().is_none() {
            return StopCheck {
                text: std::mem::take(&mut self.pending),
                stopped: false,
            };
        }
        // The earliest occurrence of any stop string wins.
        if let Some(at) = self.stops().filter_map(|s| self.pending.find(s)).min() {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return StopCheck {
                text,
                stopped: true,
            };
        }
        let hold = self
            .stops()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let release = self.pending.len() - hold;
        let text = self.pending[..release].to_string();
        self.pending.drain(..release);
        StopCheck {
            text,
            stopped: false,
        }
    }

    /// Releases the held-back tail when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let c = m.push(p);
            out.push_str(&c.text);
            if c.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_spanning_tokens_is_cut_and_never_leaks() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_match() {
        assert_eq!(run(&["END"], &["a E", "Nx", "y"]), ("a ENxy".into(), false));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        assert_eq!(run(&["世界", "b"], &["a世", "界b"]), ("a".into(), true));
        assert_eq!(run(&["ü!"], &["grüß"]), ("grüß".into(), false));
    }

    #[test]
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["x", "y"]), ("xy".into(), false));
    }

    proptest::proptest! {
        /// Whatever the stops and however the text is cut: without a stop in it, all the text
        /// is released; otherwise the release is the text up to a stop string (the first to
        /// complete as text arrives), and never holds a stop itself.
        #[test]
        fn releases_the_text_before_a_stop_and_never_a_stop(
            stops in proptest::collection::vec("[ab€]{0,4}", 0..4),
            pieces in proptest::collection::vec("[ab€c]{0,6}", 0..12),
        ) {
            let stops_ref: Vec<&str> = stops.iter().map(String::as_str).collect();
            let pieces_ref: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (out, stopped) = run(&stops_ref, &pieces_ref);
            let input: String = pieces.concat();
            let live: Vec<&str> = stops_ref.iter().copied().filter(|s| !s.is_empty()).collect();
            proptest::prop_assert!(live.iter().all(|s| !out.contains(s)), "a stop leaked: {out:?}");
            if stopped {
                proptest::prop_assert!(input.starts_with(&out));
                let rest = &input[out.len()..];
                proptest::prop_assert!(live.iter().any(|s| rest.starts_with(s)));
            } else {
                proptest::prop_assert!(live.iter().all(|s| !input.contains(s)));
                proptest::prop_assert_eq!(&out, &input);
            }
        }
    }
}
