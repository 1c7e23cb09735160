//! String-level stop sequences, matched across token boundaries.
//!
//! Decoded text arrives piece by piece. The matcher passes text on as soon as it can no longer
//! be the start of a stop sequence and holds back the rest, so the client never sees any part
//! of a stop string nor anything after it.
//!
//! When a piece completes a stop sequence, every stop found in the not-yet-emitted text counts
//! and the one whose match starts first wins. Generation ends at the first piece that completes
//! any stop, so with stops `"abcd"` and `"bc"` the piece `"abc"` stops at `"bc"` (emitting
//! `"a"`) without waiting to see whether a `"d"` would complete `"abcd"`, which starts earlier;
//! the pieces `"ab"`, `"cd"` stop at `"abcd"` instead. Which stop wins can thus depend on how
//! the text is split into tokens; what is emitted never contains a stop string.

/// OpenAI accepts at most this many stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest accepted stop sequence, in UTF-8 bytes. Bounds what the matcher holds back.
pub const MAX_STOP_SEQUENCE_BYTES: usize = 256;

/// A `stop` request field that breaks a limit; each message names the field and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StopError {
    #[error("`stop` may hold at most {MAX_STOP_SEQUENCES} sequences, got {0}")]
    TooMany(usize),
    #[error("`stop` sequence {index} is empty; stop sequences must not be empty")]
    Empty { index: usize },
    #[error(
        "`stop` sequence {index} is {bytes} bytes long, the limit is {MAX_STOP_SEQUENCE_BYTES} bytes"
    )]
    TooLong { index: usize, bytes: usize },
}

impl StopError {
    /// The request field at fault, as in the OpenAI API.
    pub fn field(&self) -> &'static str {
        "stop"
    }
}

/// What to do with one piece of decoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to send to the client now. When `stopped`, the text up to (not
    /// including) the stop string, and nothing after it.
    pub emit: String,
    /// A stop sequence matched; generation should end. Stays true for every later push.
    pub stopped: bool,
}

/// Finds stop sequences in a stream of decoded text; one per sequence.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: always a proper prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Checks the limits: at most [`MAX_STOP_SEQUENCES`] non-empty strings of at most
    /// [`MAX_STOP_SEQUENCE_BYTES`] bytes each. An empty list gives a pass-through matcher.
    pub fn new(stops: Vec<String>) -> Result<Self, StopError> {
        if stops.len() > MAX_STOP_SEQUENCES {
            return Err(StopError::TooMany(stops.len()));
        }
        for (index, stop) in stops.iter().enumerate() {
            if stop.is_empty() {
                return Err(StopError::Empty { index });
            }
            if stop.len() > MAX_STOP_SEQUENCE_BYTES {
                return Err(StopError::TooLong {
                    index,
                    bytes: stop.len(),
                });
            }
        }
        Ok(Self {
            stops,
            held: String::new(),
            stopped: false,
        })
    }

    /// No stop sequences configured: `push` passes text straight through.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Feeds newly decoded text. Returns what can be emitted now; holds back the longest
    /// suffix that is a proper prefix of some stop string (whole characters only). After a
    /// stop has matched, returns empty text with `stopped` set.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);

        // Earlier text was released only once it could not start a stop, so any match begins
        // inside `held`.
        let first_match = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(start) = first_match {
            self.held.truncate(start);
            self.stopped = true;
            return StopOutcome {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }

        let keep = self
            .stops
            .iter()
            .map(|stop| longest_suffix_prefix(&self.held, stop))
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        StopOutcome {
            emit: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Ends generation without a stop: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`. Such a
/// suffix starts on a character boundary of `text`, because the prefix of `stop` it equals
/// does.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let longest = text.len().min(stop.len().saturating_sub(1));
    (1..=longest)
        .rev()
        .find(|&len| stop.is_char_boundary(len) && text.ends_with(&stop[..len]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect()).expect("valid stops")
    }

    /// Pushes every piece; returns the concatenated emits, whether it stopped, and `finish`.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, String) {
        let mut m = matcher(stops);
        let mut out = String::new();
        let mut stopped = false;
        for piece in pieces {
            let outcome = m.push(piece);
            assert!(!stopped || outcome.emit.is_empty(), "emitted after stop");
            out.push_str(&outcome.emit);
            stopped |= outcome.stopped;
        }
        let tail = m.finish();
        (out, stopped, tail)
    }

    fn outcome(emit: &str, stopped: bool) -> StopOutcome {
        StopOutcome {
            emit: emit.to_owned(),
            stopped,
        }
    }

    #[test]
    fn stop_split_across_pushes() {
        let mut m = matcher(&["\n\nUser:"]);
        assert_eq!(m.push("Hello"), outcome("Hello", false));
        assert_eq!(m.push("\n"), outcome("", false));
        assert_eq!(m.push("\nUs"), outcome("", false));
        assert_eq!(m.push("er:"), outcome("", true));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn text_after_the_stop_in_the_same_push_is_dropped() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("abc E"), outcome("abc ", false));
        assert_eq!(m.push("ND and more"), outcome("", true));
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("xyENDz"), outcome("xy", true));
    }

    #[test]
    fn held_text_is_released_once_it_cannot_start_a_stop() {
        let mut m = matcher(&["\n\nUser:"]);
        assert_eq!(m.push("a\n"), outcome("a", false));
        assert_eq!(m.push("\nUs"), outcome("", false));
        assert_eq!(m.push("e"), outcome("", false));
        assert_eq!(m.push("x"), outcome("\n\nUsex", false));
        assert_eq!(m.push("r"), outcome("r", false));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn release_keeps_a_new_partial_match_in_the_tail() {
        // "\n\n" fails as "\n\nX" but its last "\n" could start the stop again.
        let mut m = matcher(&["\n\nUser:"]);
        assert_eq!(m.push("\n\n"), outcome("", false));
        assert_eq!(m.push("X\n"), outcome("\n\nX", false));
        assert_eq!(m.push("\nUser:"), outcome("", true));
    }

    #[test]
    fn overlapping_stops_earliest_start_wins() {
        // "bc" is complete in "abc"; "abcd" is not, so generation stops before "bc".
        let mut m = matcher(&["abcd", "bc"]);
        assert_eq!(m.push("abc"), outcome("a", true));
        // Both complete in one piece: "abcd" starts first.
        let mut m = matcher(&["bc", "abcd"]);
        assert_eq!(m.push("xabcdy"), outcome("x", true));
        // Across pushes: "ab" is held as a prefix of "abcd", then "c" completes "bc".
        let mut m = matcher(&["abcd", "bc"]);
        assert_eq!(m.push("ab"), outcome("", false));
        assert_eq!(m.push("c"), outcome("a", true));
        // The list order does not matter, only the position.
        let mut m = matcher(&["cd", "abcd"]);
        assert_eq!(m.push("zab"), outcome("z", false));
        assert_eq!(m.push("cd"), outcome("", true));
    }

    #[test]
    fn stop_at_the_very_start() {
        let mut m = matcher(&["###"]);
        assert_eq!(m.push("###tail"), outcome("", true));
        let mut m = matcher(&["###"]);
        assert_eq!(m.push("#"), outcome("", false));
        assert_eq!(m.push("##"), outcome("", true));
    }

    #[test]
    fn stop_equal_to_the_whole_text() {
        assert_eq!(
            run(&["done"], &["done"]),
            (String::new(), true, String::new())
        );
        assert_eq!(
            run(&["done"], &["d", "o", "n", "e"]),
            (String::new(), true, String::new())
        );
    }

    #[test]
    fn repeated_partial_matches() {
        let mut m = matcher(&["ab"]);
        assert_eq!(m.push("a"), outcome("", false));
        assert_eq!(m.push("a"), outcome("a", false));
        assert_eq!(m.push("b"), outcome("", true));
        assert_eq!(
            run(&["ab"], &["aab"]),
            ("a".to_owned(), true, String::new())
        );
        assert_eq!(
            run(&["aab"], &["a", "a", "a", "b"]),
            ("a".to_owned(), true, String::new())
        );
        assert_eq!(
            run(&["abab"], &["ab", "ab", "ab"]),
            (String::new(), true, String::new())
        );
        assert_eq!(
            run(&["abac"], &["ab", "ab", "ac"]),
            ("ab".to_owned(), true, String::new())
        );
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let mut m = matcher(&["日本語"]);
        assert_eq!(m.push("今日"), outcome("今", false));
        assert_eq!(m.push("本"), outcome("", false));
        assert_eq!(m.push("は"), outcome("日本は", false));
        assert_eq!(m.push("日本語!"), outcome("", true));
        // A stop that shares a lead byte with the text must not cut inside "é".
        let mut m = matcher(&["è!"]);
        assert_eq!(m.push("café"), outcome("café", false));
        assert_eq!(m.push("è"), outcome("", false));
        assert_eq!(m.push("!"), outcome("", true));
        // Emoji and mixed widths, no stop: round trip.
        let pieces = ["👋🏽 ", "é", "日", "!", "😀"];
        let (out, stopped, tail) = run(&["😀x"], &pieces);
        assert!(!stopped);
        assert_eq!(out + &tail, pieces.concat());
    }

    #[test]
    fn without_a_stop_emits_and_finish_concatenate_to_the_input() {
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (
                vec!["\n\nUser:"],
                vec!["Hi", "\n", "\nUs", "e", "r", "\n\nUser"],
            ),
            (vec!["abcd", "bc"], vec!["a", "b", "b", "a", "b", "ab"]),
            (vec!["ab"], vec!["a", "a", "a"]),
            (vec!["xyz", "zz"], vec!["z", "xy", "", "xz"]),
        ];
        for (stops, pieces) in cases {
            let (out, stopped, tail) = run(&stops, &pieces);
            assert!(!stopped, "{stops:?} {pieces:?}");
            assert_eq!(out + &tail, pieces.concat(), "{stops:?} {pieces:?}");
        }
    }

    #[test]
    fn finish_flushes_held_text() {
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("ok </"), outcome("ok ", false));
        assert_eq!(m.finish(), "</");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn after_a_stop_pushes_return_nothing() {
        let mut m = matcher(&["x"]);
        assert_eq!(m.push("abx"), outcome("ab", true));
        assert_eq!(m.push("more"), outcome("", true));
        assert_eq!(m.push("x"), outcome("", true));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn no_stops_is_a_pass_through() {
        let mut m = StopMatcher::new(Vec::new()).expect("no stops is valid");
        assert!(m.is_empty());
        assert_eq!(m.push("a\n\nUser:"), outcome("a\n\nUser:", false));
        assert_eq!(m.push(""), outcome("", false));
        assert_eq!(m.finish(), "");
        assert!(!matcher(&["a"]).is_empty());
    }

    #[test]
    fn empty_pushes_change_nothing() {
        let mut m = matcher(&["ab"]);
        assert_eq!(m.push(""), outcome("", false));
        assert_eq!(m.push("a"), outcome("", false));
        assert_eq!(m.push(""), outcome("", false));
        assert_eq!(m.push("b"), outcome("", true));
    }

    #[test]
    fn random_streams_keep_the_invariants() {
        use rand::{RngCore, SeedableRng};
        let alphabet = ['a', 'b', 'é', '日'];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let mut pick = |n: usize| (rng.next_u32() as usize) % n;
        for _ in 0..3000 {
            let word = |pick: &mut dyn FnMut(usize) -> usize, max: usize| -> String {
                let len = 1 + pick(max);
                (0..len).map(|_| alphabet[pick(alphabet.len())]).collect()
            };
            let stops: Vec<String> = (0..1 + pick(3)).map(|_| word(&mut pick, 4)).collect();
            let input = word(&mut pick, 12);
            let chars: Vec<char> = input.chars().collect();
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < chars.len() {
                let len = (1 + pick(4)).min(chars.len() - at);
                pieces.push(chars[at..at + len].iter().collect::<String>());
                at += len;
            }

            let mut m = StopMatcher::new(stops.clone()).expect("valid stops");
            let mut out = String::new();
            let mut fed = String::new();
            let mut stopped = false;
            for piece in &pieces {
                fed.push_str(piece);
                let outcome = m.push(piece);
                out.push_str(&outcome.emit);
                assert!(fed.starts_with(&out), "{stops:?} {pieces:?}");
                // Held text is only ever a proper prefix of a stop.
                if !outcome.stopped {
                    let held = &fed[out.len()..];
                    assert!(held.is_empty() || stops.iter().any(|s| s.starts_with(held)));
                    assert!(stops.iter().all(|s| !held.contains(s.as_str())));
                }
                stopped = outcome.stopped;
                if stopped {
                    break;
                }
            }
            assert!(
                stops.iter().all(|s| !out.contains(s.as_str())),
                "{stops:?} {pieces:?}"
            );
            if stopped {
                assert!(
                    stops
                        .iter()
                        .any(|s| fed[out.len()..].starts_with(s.as_str()))
                );
                assert_eq!(m.finish(), "");
            } else {
                assert_eq!(out + &m.finish(), input, "{stops:?} {pieces:?}");
                assert!(stops.iter().all(|s| !input.contains(s.as_str())));
            }
        }
    }

    #[test]
    fn validation_names_stop_and_the_limit() {
        let too_many = vec!["a".to_owned(); MAX_STOP_SEQUENCES + 1];
        let err = StopMatcher::new(too_many).expect_err("invalid stops");
        assert_eq!(err, StopError::TooMany(5));
        assert_eq!(err.field(), "stop");
        assert_eq!(
            err.to_string(),
            "`stop` may hold at most 4 sequences, got 5"
        );

        let err = StopMatcher::new(vec!["a".into(), String::new()]).expect_err("invalid stops");
        assert_eq!(err, StopError::Empty { index: 1 });
        assert!(err.to_string().starts_with("`stop` sequence 1 is empty"));

        let long = "é".repeat(MAX_STOP_SEQUENCE_BYTES / 2 + 1);
        let err = StopMatcher::new(vec![long]).expect_err("invalid stops");
        assert_eq!(
            err.to_string(),
            "`stop` sequence 0 is 258 bytes long, the limit is 256 bytes"
        );

        assert!(StopMatcher::new(vec!["a".repeat(MAX_STOP_SEQUENCE_BYTES); 4]).is_ok());
    }
}
