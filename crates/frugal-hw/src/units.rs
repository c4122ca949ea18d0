//! Byte counts as people write and read them.

use std::fmt;

const UNITS: [(&str, u64); 9] = [
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("b", 1),
];

/// A text that is not a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BytesError {
    /// A number with a unit this parser does not know.
    #[error("`{text}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")]
    Unit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
    },
    /// No number where one is needed.
    #[error("`{text}` is not a byte count (examples: 4096, 512MiB, 8GB, 1.5GiB)")]
    NotANumber {
        /// The whole text.
        text: String,
    },
    /// More bytes than 64 bits count.
    #[error("`{text}` is too large")]
    TooLarge {
        /// The whole text.
        text: String,
    },
}

/// Parses `"512MiB"`, `"8 GB"`, `"1.5GiB"` or a plain byte count.
///
/// Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (kB, MB, GB, TB)
/// powers of 1000, as disk and GPU vendors use them. The single letters K, M, G and T are
/// read as binary, since that is what `free -h` and most memory limits print.
pub fn parse_bytes(text: &str) -> Result<u64, BytesError> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number = number.replace('_', "");
    let suffix = suffix.trim().to_ascii_lowercase();
    let multiplier = match suffix.as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        other => UNITS
            .iter()
            .find(|(name, _)| *name == other)
            .map(|&(_, m)| m)
            .ok_or_else(|| BytesError::Unit {
                text: text.to_owned(),
                unit: suffix.clone(),
            })?,
    };
    let bad = || BytesError::NotANumber {
        text: text.to_owned(),
    };
    let too_large = || BytesError::TooLarge {
        text: text.to_owned(),
    };
    if number.is_empty() {
        return Err(bad());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).ok_or_else(too_large);
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(bytes.round() as u64)
}

/// Displays a byte count with a binary unit: `23.4 GiB`, `512 MiB`, `0 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < NAMES.len() {
            value /= 1024.0;
            unit += 1;
        }
        if value >= 100.0 {
            write!(f, "{value:.0} {}", NAMES[unit])
        } else {
            write!(f, "{value:.1} {}", NAMES[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_spellings() {
        for (text, want) in [
            ("4096", 4096),
            ("512MiB", 512 << 20),
            ("512 mib", 512 << 20),
            ("8GB", 8_000_000_000),
            ("1.5GiB", 3 << 29),
            ("2G", 2 << 30),
            ("1_000", 1000),
            ("0", 0),
            ("7 B", 7),
        ] {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense_with_the_value_named() {
        for text in [
            "",
            "GiB",
            "12 parsecs",
            "1.2.3GB",
            "-5MB",
            "99999999999999999999TB",
        ] {
            let err = parse_bytes(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{text}`")), "{err}");
        }
    }

    #[test]
    fn displays_binary_units() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(200 << 20).to_string(), "200 MiB");
        assert_eq!(Bytes(25_125_535_744).to_string(), "23.4 GiB");
    }

    proptest! {
        #[test]
        fn display_then_parse_is_within_rounding(n in 0u64..(1 << 50)) {
            let shown = Bytes(n).to_string().replace(' ', "");
            let back = parse_bytes(&shown).unwrap();
            let err = (back as f64 - n as f64).abs();
            prop_assert!(err <= n as f64 * 0.051 + 1.0, "{n} -> {shown} -> {back}");
        }
    }
}
