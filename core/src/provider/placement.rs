//! Where a `path` credential goes: the URL path template (e.g. Telegram's `/bot{secret}`).
//!
//! A template is a path prefix of one or more segments; exactly one of them holds the
//! [`SECRET_MARK`], possibly with literal text around it (`bot{secret}`). A caller's path
//! matches when it starts with the template's segments: the literal ones equal, the secret's
//! one starting with the literal text before the mark and ending with the text after it. What
//! stands in the mark's place in the caller's segment (its placeholder: `/botPLACEHOLDER/getMe`,
//! `/bot{secret}/getMe`, or nothing at all, `/bot/getMe`) is replaced by the secret, encoded as
//! a path segment. Nothing else of the path is touched.

/// What a template marks the secret's place with.
pub const SECRET_MARK: &str = "{secret}";

/// A parsed, valid `path` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate<'a> {
    /// Literal segments before the secret's.
    before: Vec<&'a str>,
    /// Literal text of the secret's segment before the mark.
    prefix: &'a str,
    /// Literal text of the secret's segment after the mark.
    suffix: &'a str,
    /// Literal segments after the secret's.
    after: Vec<&'a str>,
}

/// Characters a path segment may carry unencoded besides the unreserved ones (RFC 3986 pchar:
/// sub-delims, `:` and `@`).
const SEGMENT_SAFE: &[u8] = b"!$&'()*+,;=:@";

fn literal_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let pct =
                i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !pct {
                return false;
            }
            i += 3;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"-._~".contains(&c) || SEGMENT_SAFE.contains(&c)) {
            return false;
        }
        i += 1;
    }
    true
}

impl<'a> PathTemplate<'a> {
    /// Parses and checks a template; `Err` says what is wrong with it.
    pub fn parse(template: &'a str) -> Result<Self, &'static str> {
        if template.len() > 512 {
            return Err("must be at most 512 characters");
        }
        let Some(rest) = template.strip_prefix('/') else {
            return Err("must start with '/'");
        };
        if template.matches(SECRET_MARK).count() != 1 {
            return Err("must contain {secret} exactly once");
        }
        let mut before = Vec::new();
        let mut secret = None;
        let mut after = Vec::new();
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err("must not have empty segments ('//' or a trailing '/')");
            }
            if segment == "." || segment == ".." {
                return Err("must not have '.' or '..' segments");
            }
            match segment.split_once(SECRET_MARK) {
                Some((prefix, suffix)) => {
                    if !literal_ok(prefix) || !literal_ok(suffix) {
                        return Err("may hold only URL path characters besides {secret}");
                    }
                    secret = Some((prefix, suffix));
                }
                None => {
                    if !literal_ok(segment) {
                        return Err("may hold only URL path characters besides {secret}");
                    }
                    if secret.is_some() {
                        after.push(segment);
                    } else {
                        before.push(segment);
                    }
                }
            }
        }
        let (prefix, suffix) = secret.expect("the mark is in one segment");
        Ok(Self {
            before,
            prefix,
            suffix,
            after,
        })
    }

    fn segments(&self) -> usize {
        self.before.len() + 1 + self.after.len()
    }

    /// `path` (no query) with the placeholder replaced by `secret` (encoded as a path
    /// segment); `None` when `path` does not match the template.
    pub fn place(&self, path: &str, secret: &str) -> Option<String> {
        let rest = path.strip_prefix('/')?;
        let n = self.segments();
        let parts: Vec<&str> = rest.splitn(n + 1, '/').collect();
        if parts.len() < n {
            return None;
        }
        let k = self.before.len();
        let literal_ok = self
            .before
            .iter()
            .chain(self.after.iter())
            .zip(parts[..k].iter().chain(parts[k + 1..n].iter()))
            .all(|(t, p)| t == p);
        let seg = parts[k];
        let own_ok = seg.len() >= self.prefix.len() + self.suffix.len()
            && seg.starts_with(self.prefix)
            && seg.ends_with(self.suffix);
        if !literal_ok || !own_ok {
            return None;
        }
        let mut out = String::with_capacity(path.len() + secret.len() * 3);
        for (i, p) in parts.iter().enumerate() {
            out.push('/');
            if i == k {
                out.push_str(self.prefix);
                out.push_str(&encode_segment(secret));
                out.push_str(self.suffix);
            } else {
                out.push_str(p);
            }
        }
        Some(out)
    }

    /// Whether `path` (no query) matches the template.
    pub fn matches(&self, path: &str) -> bool {
        self.place(path, "").is_some()
    }
}

/// What [`encode_segment`] escapes: all but unreserved characters, sub-delims, `:` and `@`.
const SEGMENT_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// `s` percent-encoded as one path segment: unreserved characters, sub-delims, `:` and `@` as
/// they are, every other byte (`/`, `%`, `?`, `#`, space, non-ASCII, …) as `%XX`.
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT_ESCAPED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        for ok in [
            "/bot{secret}",
            "/{secret}",
            "/v1/{secret}/x",
            "/k-{secret}.json",
            "/a%20b/{secret}",
        ] {
            assert!(PathTemplate::parse(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("bot{secret}", "'/'"),
            ("/bot", "exactly once"),
            ("/{secret}/{secret}", "exactly once"),
            ("/bot{secret}/", "empty"),
            ("//{secret}", "empty"),
            ("/../{secret}", "'..'"),
            ("/a b/{secret}", "path characters"),
            ("/a?b/{secret}", "path characters"),
            ("/{x}/{secret}", "path characters"),
            ("/%zz/{secret}", "path characters"),
            ("/a%2/{secret}", "path characters"),
        ] {
            let e = PathTemplate::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(PathTemplate::parse(&format!("/{}{{secret}}", "a".repeat(600))).is_err());
    }

    #[test]
    fn the_placeholder_segment_gets_the_secret_and_nothing_else_changes() {
        let t = PathTemplate::parse("/bot{secret}").unwrap();
        let s = "123456:ABC-DEF";
        for caller in ["/botPLACEHOLDER/getMe", "/bot{secret}/getMe", "/bot/getMe"] {
            assert_eq!(
                t.place(caller, s).as_deref(),
                Some("/bot123456:ABC-DEF/getMe"),
                "{caller}"
            );
        }
        // The rest of the path (a placeholder there included) is left as it was.
        assert_eq!(
            t.place("/botX/send/botX//a%2F", s).as_deref(),
            Some("/bot123456:ABC-DEF/send/botX//a%2F")
        );
        assert_eq!(t.place("/botX", s).as_deref(), Some("/bot123456:ABC-DEF"));
        assert_eq!(t.place("/botX/", s).as_deref(), Some("/bot123456:ABC-DEF/"));
        for no in ["/", "", "/getMe", "/Bot/getMe", "x/botX"] {
            assert_eq!(t.place(no, s), None, "{no}");
        }
        let t = PathTemplate::parse("/v1/key-{secret}.json/items").unwrap();
        assert!(t.matches("/v1/key-.json/items/3"));
        assert!(t.matches("/v1/key-X.json/items"));
        assert!(!t.matches("/v1/key-X.json/other"));
        assert!(!t.matches("/v2/key-X.json/items"));
        assert!(!t.matches("/v1/key-X.jso/items"));
        assert!(!t.matches("/v1/key-X.json"));
        // prefix and suffix may not overlap: "ab" is not "a{}b" with "ab" around a secret.
        let t = PathTemplate::parse("/ab{secret}ba").unwrap();
        assert!(!t.matches("/aba"));
        assert!(t.matches("/abba"));
    }

    #[test]
    fn secrets_are_encoded_as_one_segment() {
        assert_eq!(
            encode_segment("a/b:c%d e@f+g?h#i"),
            "a%2Fb:c%25d%20e@f+g%3Fh%23i"
        );
        assert_eq!(encode_segment("ü"), "%C3%BC");
        let t = PathTemplate::parse("/{secret}").unwrap();
        assert_eq!(t.place("/x/y", "s/e").as_deref(), Some("/s%2Fe/y"));
    }
}
