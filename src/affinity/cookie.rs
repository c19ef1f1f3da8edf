//! Finding one cookie in a request's `Cookie` headers (RFC 6265, section
//! 5.4, read leniently as browsers and servers do).
//!
//! Works on bytes, so a header that is not UTF-8 is still searched; never
//! allocates; reads each byte a bounded number of times, so a huge header
//! costs time in proportion to its length.

use http::header::{HeaderMap, COOKIE};

/// The value of the first non-empty cookie called `name` in any of the
/// `Cookie` headers, without surrounding double quotes.
///
/// Pairs are separated by `;`; spaces and tabs around names and values are
/// ignored; a pair with no `=` or an empty name is skipped.
pub(crate) fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|header| find_in_header(header.as_bytes(), name.as_bytes()))
}

/// [`find_cookie`] for one header value.
pub(crate) fn find_in_header<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let (pair_name, value) = name_value(pair)?;
        (pair_name == name && !value.is_empty()).then_some(value)
    })
}

/// The name and value of one `name=value` pair, blanks trimmed and the value
/// unquoted; `None` without `=` or with an empty name.
pub(crate) fn name_value(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let name = trim(&pair[..eq]);
    (!name.is_empty()).then(|| (name, unquote(trim(&pair[eq + 1..]))))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
        find_in_header(header.as_bytes(), name.as_bytes()).map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn pairs_spaces_and_quotes() {
        assert_eq!(find("JSESSIONID=abc", "JSESSIONID"), Some("abc"));
        assert_eq!(find("a=1; JSESSIONID=abc; b=2", "JSESSIONID"), Some("abc"));
        assert_eq!(find("a=1;JSESSIONID = abc ;b=2", "JSESSIONID"), Some("abc"));
        assert_eq!(
            find("a=1;\tJSESSIONID=\"abc def\"", "JSESSIONID"),
            Some("abc def")
        );
        assert_eq!(find("JSESSIONID=a=b=c", "JSESSIONID"), Some("a=b=c"));
        // Names are case-sensitive, and a prefix is not a match.
        assert_eq!(find("jsessionid=abc; JSESSIONIDX=1", "JSESSIONID"), None);
    }

    #[test]
    fn malformed_and_empty_pairs_are_skipped() {
        assert_eq!(
            find(
                "garbage; =x; JSESSIONID=; JSESSIONID=\"\"; JSESSIONID=ok",
                "JSESSIONID"
            ),
            Some("ok")
        );
        assert_eq!(find(";;;", "a"), None);
        assert_eq!(find("", "a"), None);
        assert_eq!(find("a", "a"), None);
        assert_eq!(find("\"=1", "\""), Some("1"));
    }

    #[test]
    fn every_cookie_header_is_searched_and_bytes_need_not_be_utf8() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"theme=\xff\xfe; x=1").unwrap(),
        );
        headers.append(COOKIE, HeaderValue::from_static("sid=42"));
        assert_eq!(find_cookie(&headers, "sid"), Some(&b"42"[..]));
        assert_eq!(find_cookie(&headers, "theme"), Some(&b"\xff\xfe"[..]));
        assert_eq!(find_cookie(&headers, "none"), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
        }

        /// Cookie values as servers send them: no `;`, no quotes, no blanks.
        fn value() -> impl Strategy<Value = String> {
            "[A-Za-z0-9!#$%&'()*+,./:<=>?@^_`{|}~-]{1,16}"
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_values_hold_no_separator(
                header in proptest::collection::vec(any::<u8>(), 0..512),
                name in proptest::collection::vec(any::<u8>(), 0..8),
            ) {
                if let Some(found) = find_in_header(&header, &name) {
                    prop_assert!(!found.contains(&b';'));
                    prop_assert!(!found.is_empty());
                }
            }

            #[test]
            fn the_target_is_found_among_other_pairs(
                before in proptest::collection::vec((token(), value()), 0..6),
                after in proptest::collection::vec((token(), value()), 0..6),
                target in value(),
                quoted in any::<bool>(),
                spaces in proptest::collection::vec("[ \t]{0,2}", 16),
            ) {
                let name = "sid";
                let mut pairs: Vec<String> = before
                    .iter()
                    .filter(|(n, _)| n != name)
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                let shown = if quoted { format!("\"{target}\"") } else { target.clone() };
                pairs.push(format!("{}{name}{}={}{shown}", spaces[0], spaces[1], spaces[2]));
                pairs.extend(after.iter().map(|(n, v)| format!("{n}={v}")));
                let header = pairs.join(&format!(";{}", spaces[3]));
                let found = find_in_header(header.as_bytes(), name.as_bytes());
                prop_assert_eq!(found, Some(target.as_bytes()));
            }
        }
    }

    #[test]
    fn a_huge_header_is_read_through() {
        let mut header = "a=b; ".repeat(200_000).into_bytes();
        header.extend_from_slice(b"sid=last");
        assert_eq!(find_in_header(&header, b"sid"), Some(&b"last"[..]));
    }
}
