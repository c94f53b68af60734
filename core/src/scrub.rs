//! Masking a provider's credential wherever the provider hands it back: an error body quoting
//! the API key, an echo of the request's headers. The hub runs every response of a provider
//! with credentials through a [`Scrubber`] before a module or a store (the DLQ's excerpt) sees
//! it.
//!
//! - Every occurrence of every secret is replaced by `*` repeated to the secret's length, so a
//!   body's `Content-Length`, a gRPC message's length prefix and a UTF-8 text's validity (a
//!   secret is whole characters, `*` is one byte) never change. Occurrences are found on the
//!   original bytes before any is masked, so overlapping secrets are all masked.
//! - Secrets shorter than [`MIN_SECRET_LEN`] bytes are not masked on their own (a 3-letter
//!   "password" would turn every `abc` of every answer into `***`); the forms they are sent in
//!   (a `Basic` header's base64) are long enough and still are.
//! - Bodies arrive in chunks: a [`ScrubStream`] masks a secret that straddles chunk boundaries
//!   by holding back only the longest end of what it saw that could still become a secret (a
//!   proper prefix of one); everything else goes out at once, so a token stream is not delayed
//!   (its events end in a newline, which no secret starts with). Its memory is bounded by the
//!   longest secret.
//! - Compressed bytes cannot be scrubbed: a `gzip`ped echo of the key is not the key's bytes.
//!   The proxy asks providers it scrubs for `Accept-Encoding: identity`, and relays a body that
//!   comes with a `Content-Encoding` anyway as it is (counted).

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

/// Shortest secret masked, in bytes (shorter ones are skipped; see the module docs).
pub const MIN_SECRET_LEN: usize = 8;

/// The byte a secret's bytes are replaced with.
pub const MASK: u8 = b'*';

/// Masks a fixed set of secrets (see the module docs). `Debug` shows how many, never which.
#[derive(Clone)]
pub struct Scrubber {
    /// One searcher per distinct secret.
    finders: Vec<Finder<'static>>,
    /// Length of the longest secret.
    longest: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.finders.len())
            .finish()
    }
}

impl Scrubber {
    /// A scrubber of `secrets` (duplicates and those shorter than [`MIN_SECRET_LEN`] skipped);
    /// `None` when nothing is left to mask.
    pub fn new(secrets: impl IntoIterator<Item = impl AsRef<[u8]>>) -> Option<Scrubber> {
        let mut s = Scrubber {
            finders: Vec::new(),
            longest: 0,
        };
        for secret in secrets {
            s.add(secret.as_ref());
        }
        (!s.finders.is_empty()).then_some(s)
    }

    /// This scrubber plus one more secret (a per-call access token).
    pub fn with_extra(&self, secret: impl AsRef<[u8]>) -> Scrubber {
        let mut s = self.clone();
        s.add(secret.as_ref());
        s
    }

    fn add(&mut self, secret: &[u8]) {
        if secret.len() < MIN_SECRET_LEN || self.finders.iter().any(|f| f.needle() == secret) {
            return;
        }
        self.longest = self.longest.max(secret.len());
        self.finders.push(Finder::new(secret).into_owned());
    }

    /// Length of the longest secret masked.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Every occurrence of every secret in `hay`, as `(start, end)`, found before any is masked
    /// (a secret repeating itself, `abab` in `ababab`, is found at each start). Allocates only
    /// when something is found.
    fn occurrences(&self, hay: &[u8]) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for f in &self.finders {
            let n = f.needle().len();
            let mut at = 0;
            while let Some(i) = hay.get(at..).and_then(|rest| f.find(rest)) {
                found.push((at + i, at + i + n));
                at += i + 1;
            }
        }
        found
    }

    fn mask_ranges(buf: &mut [u8], ranges: &[(usize, usize)]) {
        for &(start, end) in ranges {
            buf[start..end].fill(MASK);
        }
    }

    /// Masks every occurrence of every secret in `buf`; returns how many there were.
    pub fn mask_in_place(&self, buf: &mut [u8]) -> usize {
        let found = self.occurrences(buf);
        Self::mask_ranges(buf, &found);
        found.len()
    }

    /// A copy of `bytes` with every secret masked; `None` when there is none (nothing copied).
    pub fn masked(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let found = self.occurrences(bytes);
        if found.is_empty() {
            return None;
        }
        let mut out = bytes.to_vec();
        Self::mask_ranges(&mut out, &found);
        Some(out)
    }

    /// `s` with every secret masked (header values, excerpts).
    pub fn mask_str(&self, s: &str) -> String {
        let Some(bytes) = self.masked(s.as_bytes()) else {
            return s.to_owned();
        };
        // Whole secrets (whole UTF-8 characters) became ASCII: still UTF-8.
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// Like [`Scrubber::mask_in_place`] for bytes cut short (an excerpt of a longer body): the
    /// end that could be the start of a secret is masked too. Returns the occurrences masked.
    pub fn mask_truncated(&self, buf: &mut [u8]) -> usize {
        let n = self.mask_in_place(buf);
        let tail = self.partial_tail(buf);
        let len = buf.len();
        buf[len - tail..].fill(MASK);
        n
    }

    /// Length of the longest end of `data` that is a proper prefix of some secret (what a
    /// stream must hold back: the next bytes could complete it). Usually 0.
    fn partial_tail(&self, data: &[u8]) -> usize {
        let mut longest = 0;
        for f in &self.finders {
            let secret = f.needle();
            // A tail longer than the best so far, shorter than the secret.
            let window = (secret.len() - 1).min(data.len());
            if window <= longest {
                continue;
            }
            let tail = &data[data.len() - window..];
            // The first (longest) candidate start is the answer for this secret.
            for p in memchr::memchr_iter(secret[0], &tail[..window - longest]) {
                if secret.starts_with(&tail[p..]) {
                    longest = window - p;
                    break;
                }
            }
        }
        longest
    }

    /// A stream scrubber over this scrubber's secrets.
    pub fn stream(&self) -> ScrubStream<'_> {
        ScrubStream {
            scrubber: self,
            held_raw: Vec::new(),
            held_out: Vec::new(),
        }
    }
}

/// Scrubs a body that arrives in chunks (see the module docs): the output, all pushes then
/// [`ScrubStream::finish`] concatenated, is exactly what [`Scrubber::mask_in_place`] makes of
/// the whole body. A stream that is cut (the call ends early) is dropped: what it held back
/// never goes out.
pub struct ScrubStream<'a> {
    scrubber: &'a Scrubber,
    /// The bytes held back, as they came (what the next chunk is matched with).
    held_raw: Vec<u8>,
    /// The same bytes as they go out (a secret that ended inside them is already masked).
    held_out: Vec<u8>,
}

impl std::fmt::Debug for ScrubStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubStream")
            .field("held", &self.held_raw.len())
            .finish()
    }
}

impl ScrubStream<'_> {
    /// The next chunk in; what can go out now (often the chunk itself, not copied; empty when
    /// all of it is held back).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.held_raw.is_empty() {
            let found = self.scrubber.occurrences(&chunk);
            let tail = self.scrubber.partial_tail(&chunk);
            let keep = chunk.len() - tail;
            if found.is_empty() {
                self.held_raw.extend_from_slice(&chunk[keep..]);
                self.held_out.extend_from_slice(&chunk[keep..]);
                return chunk.slice(..keep);
            }
            let mut out = BytesMut::from(&chunk[..]);
            Scrubber::mask_ranges(&mut out, &found);
            self.held_raw.extend_from_slice(&chunk[keep..]);
            self.held_out.extend_from_slice(&out[keep..]);
            out.truncate(keep);
            return out.freeze();
        }
        // What was held, then the chunk: matched as one.
        let mut raw = std::mem::take(&mut self.held_raw);
        raw.extend_from_slice(&chunk);
        let mut out = BytesMut::with_capacity(raw.len());
        out.extend_from_slice(&self.held_out);
        out.extend_from_slice(&chunk);
        self.held_out.clear();
        let found = self.scrubber.occurrences(&raw);
        Scrubber::mask_ranges(&mut out, &found);
        let keep = raw.len() - self.scrubber.partial_tail(&raw);
        self.held_raw.extend_from_slice(&raw[keep..]);
        self.held_out.extend_from_slice(&out[keep..]);
        out.truncate(keep);
        out.freeze()
    }

    /// The end of the body: what was held back (it did not become a secret).
    pub fn finish(mut self) -> Bytes {
        self.held_raw.clear();
        Bytes::from(std::mem::take(&mut self.held_out))
    }

    /// Bytes held back now (at most the longest secret's length minus one).
    pub fn held(&self) -> usize {
        self.held_raw.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "sk_live_0123456789";

    fn scrub(secrets: &[&str]) -> Scrubber {
        Scrubber::new(secrets).expect("something to mask")
    }

    fn stars(n: usize) -> String {
        "*".repeat(n)
    }

    /// Pushes `parts` one by one, then finishes; returns each push's output and the finish.
    fn run(s: &Scrubber, parts: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut st = s.stream();
        let outs = parts
            .iter()
            .map(|p| st.push(Bytes::copy_from_slice(p)).to_vec())
            .collect();
        (outs, st.finish().to_vec())
    }

    fn joined(s: &Scrubber, parts: &[&[u8]]) -> String {
        let (outs, end) = run(s, parts);
        String::from_utf8(outs.concat().into_iter().chain(end).collect()).unwrap()
    }

    #[test]
    fn nothing_to_mask_is_none_and_short_secrets_are_skipped() {
        assert!(Scrubber::new(Vec::<&str>::new()).is_none());
        assert!(Scrubber::new(["", "a", "abc", "1234567"]).is_none());
        let s = scrub(&["a", KEY]);
        assert_eq!(s.mask_str("a banana"), "a banana");
        assert_eq!(format!("{s:?}"), "Scrubber { secrets: 1 }");
        assert!(!format!("{:?}", s.stream()).contains(KEY));
    }

    #[test]
    fn masks_every_occurrence_with_a_mask_of_the_same_length() {
        let s = scrub(&[KEY]);
        let text = format!(r#"{{"error":"bad key {KEY}","again":"{KEY}"}}"#);
        let mut buf = text.clone().into_bytes();
        assert_eq!(s.mask_in_place(&mut buf), 2);
        assert_eq!(buf.len(), text.len());
        let want = text.replace(KEY, &stars(KEY.len()));
        assert_eq!(String::from_utf8(buf).unwrap(), want);
        assert_eq!(s.mask_str(&text), want);
        assert_eq!(s.mask_str("clean"), "clean");
        assert_eq!(s.masked(b"clean"), None);
        assert_eq!(
            s.masked(KEY.as_bytes()),
            Some(stars(KEY.len()).into_bytes())
        );
    }

    #[test]
    fn overlapping_and_nested_secrets_are_all_masked() {
        // "abcdefgh" and "efghijkl" overlap in "abcdefghijkl": masking one first must not hide
        // the other.
        let s = scrub(&["abcdefgh", "efghijkl"]);
        assert_eq!(s.mask_str("xxabcdefghijklyy"), format!("xx{}yy", stars(12)));
        // One inside the other, and a secret overlapping itself.
        let s = scrub(&["Bearer tok_12345678", "tok_12345678"]);
        assert_eq!(
            s.mask_str("auth: Bearer tok_12345678, tok_12345678."),
            format!("auth: {}, {}.", stars(19), stars(12))
        );
        let s = scrub(&["abababab"]);
        assert_eq!(s.mask_str("ababababab!"), format!("{}!", stars(10)));
    }

    #[test]
    fn multibyte_secrets_keep_the_text_utf8() {
        let s = scrub(&["pässwörd-ünïcode"]);
        let masked = s.mask_str("x pässwörd-ünïcode y");
        assert_eq!(masked.len(), "x pässwörd-ünïcode y".len());
        assert!(masked.starts_with("x ***") && masked.ends_with("* y"));
    }

    #[test]
    fn a_secret_split_across_two_chunks_is_masked() {
        let s = scrub(&[KEY]);
        let (outs, end) = run(&s, &[b"key=sk_live_01", b"23456789 ok"]);
        // The part that could be the key's start waits; the rest goes at once.
        assert_eq!(outs[0], b"key=");
        assert_eq!(
            String::from_utf8(outs[1].clone()).unwrap(),
            format!("{} ok", stars(KEY.len()))
        );
        assert!(end.is_empty());
    }

    #[test]
    fn a_secret_split_across_three_chunks_is_masked() {
        let s = scrub(&[KEY]);
        let got = joined(&s, &[b"[sk_li", b"ve_0123", b"456789]"]);
        assert_eq!(got, format!("[{}]", stars(KEY.len())));
    }

    #[test]
    fn a_held_prefix_that_does_not_become_the_secret_goes_out_unchanged() {
        let s = scrub(&[KEY]);
        let (outs, end) = run(&s, &[b"see sk_live", b"ly now", b"!"]);
        assert_eq!(outs[0], b"see ");
        assert_eq!(outs[1], b"sk_lively now");
        assert_eq!(outs[2], b"!");
        assert!(end.is_empty());
        // Held at the end of the body: finish lets it out.
        let (outs, end) = run(&s, &[b"tail sk_"]);
        assert_eq!(outs[0], b"tail ");
        assert_eq!(end, b"sk_");
    }

    #[test]
    fn chunks_not_ending_like_a_secret_are_not_delayed_or_copied() {
        let s = scrub(&[KEY, "other-secret-value"]);
        let mut st = s.stream();
        for event in [
            "data: {\"delta\":\"Hel\"}\n\n",
            "data: {\"delta\":\"lo\"}\n\n",
        ] {
            let chunk = Bytes::from(event);
            let out = st.push(chunk.clone());
            assert_eq!(out, chunk);
            assert_eq!(out.as_ptr(), chunk.as_ptr(), "passed through, not copied");
            assert_eq!(st.held(), 0);
        }
        assert!(st.finish().is_empty());
    }

    #[test]
    fn a_mask_ending_inside_the_held_bytes_is_kept() {
        // "abcdefgh" ends in "fgh", held back as the start of "fghXXXXX": when it goes out
        // later it must still be masked.
        let s = scrub(&["abcdefgh", "fghXXXXX"]);
        let got = joined(&s, &[b"-abcdefgh", b"YY"]);
        assert_eq!(got, format!("-{}YY", stars(8)));
        let got = joined(&s, &[b"-abcdefgh"]);
        assert_eq!(got, format!("-{}", stars(8)));
    }

    #[test]
    fn truncated_bytes_mask_a_trailing_partial_secret() {
        let s = scrub(&[KEY]);
        let mut buf = b"error: key sk_live_0123".to_vec();
        s.mask_truncated(&mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            format!("error: key {}", stars(12))
        );
    }

    #[test]
    fn with_extra_adds_a_secret() {
        let s = scrub(&[KEY]);
        let t = s.with_extra("access-token-xyz");
        assert_eq!(s.mask_str("access-token-xyz"), "access-token-xyz");
        assert_eq!(t.mask_str("access-token-xyz"), stars(16));
        assert_eq!(t.mask_str(KEY), stars(KEY.len()));
        assert_eq!(t.with_extra("short").longest(), KEY.len());
    }

    fn secrets() -> impl Strategy<Value = Vec<String>> {
        // A small alphabet so secrets overlap, repeat and prefix one another.
        prop::collection::vec("[ab_]{8,12}", 1..4)
    }

    proptest! {
        #[test]
        fn any_split_gives_what_masking_the_whole_gives(
            secrets in secrets(),
            noise in prop::collection::vec("[ab_x]{0,20}", 0..6),
            cuts in prop::collection::vec(0usize..200, 0..8),
        ) {
            let s = Scrubber::new(&secrets).unwrap();
            // Noise with the secrets (and their halves) woven in.
            let mut input = Vec::new();
            for (i, n) in noise.iter().enumerate() {
                input.extend_from_slice(n.as_bytes());
                let sec = secrets[i % secrets.len()].as_bytes();
                if i % 3 == 2 {
                    input.extend_from_slice(&sec[..sec.len() / 2]);
                } else {
                    input.extend_from_slice(sec);
                }
            }
            let mut whole = input.clone();
            s.mask_in_place(&mut whole);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut st = s.stream();
            let mut streamed = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                streamed.extend_from_slice(&st.push(Bytes::copy_from_slice(&input[from..c])));
                prop_assert!(st.held() < s.longest());
                from = c;
            }
            streamed.extend_from_slice(&st.finish());
            prop_assert_eq!(&streamed, &whole);
            for sec in &secrets {
                prop_assert!(
                    !streamed.windows(sec.len()).any(|w| w == sec.as_bytes()),
                    "{} survived", sec
                );
            }
        }
    }
}
