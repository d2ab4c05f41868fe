//! Row timestamps as seconds since the Unix epoch (UTC), from the forms seen
//! in the wild: ISO 8601 with `T` or a space, optional fraction and zone,
//! date only, and epoch seconds (or milliseconds). Unparseable cells give
//! `None`: the row is still scored, just without time-of-day context.

/// Parses a timestamp cell.
pub(crate) fn parse(cell: &[u8]) -> Option<f64> {
    // The usual cell, without UTF-8 checks: `parse_iso` takes only ASCII,
    // so where it succeeds here it would on the `str`-trimmed text too.
    let ascii = cell.trim_ascii();
    if let Some(t) = parse_iso(ascii) {
        return Some(t);
    }
    let s = std::str::from_utf8(cell).ok()?.trim();
    if s.is_empty() {
        return None;
    }
    // `str::trim` removes a superset of ASCII whitespace (Unicode spaces
    // too): only if it removed more is there other text to try as ISO.
    if s.len() != ascii.len()
        && let Some(t) = parse_iso(s.as_bytes())
    {
        return Some(t);
    }
    if let Ok(n) = s.parse::<f64>() {
        if !n.is_finite() {
            return None;
        }
        // Epoch milliseconds (or micro) are far beyond any plausible seconds.
        return Some(match n.abs() {
            a if a >= 1e14 => n / 1e6,
            a if a >= 1e11 => n / 1e3,
            _ => n,
        });
    }
    chrono::DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|d| d.timestamp() as f64 + f64::from(d.timestamp_subsec_nanos()) / 1e9)
}

fn digits(b: &[u8], n: usize) -> Option<i64> {
    if b.len() < n || !b[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        b[..n]
            .iter()
            .fold(0i64, |a, d| a * 10 + i64::from(d - b'0')),
    )
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.f]]][Z|±HH[:]MM]`, by hand: this runs per row.
fn parse_iso(b: &[u8]) -> Option<f64> {
    let y = digits(b, 4)?;
    if b.get(4) != Some(&b'-') && b.get(4) != Some(&b'/') {
        return None;
    }
    let sep = b[4];
    let m = digits(&b[5..], 2)?;
    if b.get(7) != Some(&sep) {
        return None;
    }
    let d = digits(&b[8..], 2)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) as f64 * 86_400.0;
    let mut rest = &b[10..];
    if let Some(&c) = rest.first()
        && (c == b'T' || c == b' ')
    {
        let t = &rest[1..];
        let hh = digits(t, 2)?;
        if t.get(2) != Some(&b':') {
            return None;
        }
        let mm = digits(&t[3..], 2)?;
        let mut i = 5;
        let mut ss = 0.0;
        if t.get(5) == Some(&b':') {
            ss = digits(&t[6..], 2)? as f64;
            i = 8;
            if matches!(t.get(8), Some(b'.') | Some(b',')) {
                let frac = &t[9..];
                let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 {
                    return None;
                }
                let mut f = 0.0;
                let mut scale = 0.1;
                for &c in &frac[..n.min(9)] {
                    f += f64::from(c - b'0') * scale;
                    scale /= 10.0;
                }
                ss += f;
                i = 9 + n;
            }
        }
        if hh > 24 || mm > 59 || ss >= 61.0 {
            return None;
        }
        secs += (hh * 3600 + mm * 60) as f64 + ss;
        rest = &t[i..];
    }
    match rest {
        [] | [b'Z'] | [b'z'] => Some(secs),
        [sign @ (b'+' | b'-'), tz @ ..] => {
            let oh = digits(tz, 2)?;
            let om = match &tz[2..] {
                [] => 0,
                [b':', m @ ..] if m.len() == 2 => digits(m, 2)?,
                m if m.len() == 2 => digits(m, 2)?,
                _ => return None,
            };
            let off = (oh * 3600 + om * 60) as f64;
            Some(if *sign == b'+' {
                secs - off
            } else {
                secs + off
            })
        }
        _ => None,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<f64> {
        parse(s.as_bytes())
    }

    #[test]
    fn forms_seen_in_the_wild() {
        let base = 1_771_891_851.0; // 2026-02-24T00:10:51Z
        assert_eq!(p("2026-02-24T00:10:51"), Some(base));
        assert!((p("2026-02-24T00:10:51.644244").unwrap() - (base + 0.644244)).abs() < 1e-6);
        assert_eq!(p("2026-02-24 00:10:51"), Some(base));
        assert_eq!(p("2026-02-24T00:10:51Z"), Some(base));
        assert_eq!(p("2026-02-24T02:10:51+02:00"), Some(base));
        assert_eq!(p("2026-02-23T23:10:51-0100"), Some(base));
        assert_eq!(p("2026-02-24T00:10"), Some(base - 51.0));
        assert_eq!(p("2026-02-24"), Some(base - 651.0));
        assert_eq!(p("2026/02/24 00:10:51"), Some(base));
        assert_eq!(p("1771891851"), Some(base));
        assert_eq!(p("1771891851000"), Some(base));
        assert_eq!(p("2014-04-01 00:00:00"), Some(1_396_310_400.0));
        assert_eq!(p("Tue, 24 Feb 2026 00:10:51 +0000"), Some(base));
        // Surrounding whitespace, ASCII or Unicode (no-break, em space).
        assert_eq!(p(" 2026-02-24T00:10:51\t"), Some(base));
        assert_eq!(p("\u{a0}2026-02-24T00:10:51\u{2003}"), Some(base));
        assert_eq!(p("\u{a0}1771891851 "), Some(base));
    }

    #[test]
    fn garbage_is_none() {
        for s in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-24T25:00",
            "2026-02-24Tx",
            "NaN",
            "inf",
            "2026-02-24T00:10:51+2",
        ] {
            assert_eq!(p(s), None, "{s}");
        }
        assert_eq!(parse(b"\xff\xfe"), None);
    }
}
