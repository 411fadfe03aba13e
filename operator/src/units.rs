//! Sizes and durations as people write them in manifests: `64Mi`, `10Gi`, `1.5G`, `24h`,
//! `7d`, `1h30m`. Errors name the field and say what is accepted.

/// Bytes from a Kubernetes quantity (binary `Ki Mi Gi Ti Pi Ei`, decimal `k M G T P E`, or a
/// plain number). The result must be a whole number of bytes.
pub fn parse_quantity(field: &str, text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{field}: {text:?} {why}");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return Err(bad("is not a size (use e.g. 64Mi, 10Gi, 1Ti)")),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return Err(bad("is not a size (use e.g. 64Mi, 10Gi, 1Ti)"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| bad("is not a size (use e.g. 64Mi, 10Gi, 1Ti)"))?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad("is not a size"))?
    };
    let scaled = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac))
        .and_then(|v| v.checked_mul(multiplier))
        .ok_or_else(|| bad("is too large"))?;
    if scaled % scale != 0 {
        return Err(bad("is not a whole number of bytes"));
    }
    u64::try_from(scaled / scale).map_err(|_| bad("is too large"))
}

/// Seconds from a duration such as `90s`, `15m`, `24h`, `7d` or `1h30m`.
pub fn parse_duration(field: &str, text: &str) -> Result<u64, String> {
    let bad = || format!("{field}: {text:?} is not a duration (use e.g. 30m, 24h, 7d)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// `1.5 GiB`-style text for tables.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (text, want) in [
            ("8192", 8192),
            ("64Mi", 64 << 20),
            ("10Gi", 10 << 30),
            ("1.5Gi", 3 << 29),
            ("2k", 2000),
            ("1T", 1_000_000_000_000),
            ("128Ti", 128 << 40),
        ] {
            assert_eq!(parse_quantity("f", text), Ok(want), "{text}");
        }
        for text in ["", "Gi", "1.2.3Gi", "10GB", "-1Gi", "0.3", "99999999Ei"] {
            let err = parse_quantity("spec.x", text).unwrap_err();
            assert!(err.starts_with(&format!("spec.x: {text:?}")), "{err}");
        }
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("0s", 0),
            ("90s", 90),
            ("15m", 900),
            ("24h", 86400),
            ("7d", 604800),
            ("1h30m", 5400),
        ] {
            assert_eq!(parse_duration("f", text), Ok(want), "{text}");
        }
        for text in ["", "24", "h", "1w", "1.5h", "-1h"] {
            assert!(parse_duration("spec.retention", text).is_err(), "{text}");
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
