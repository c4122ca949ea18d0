use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Element type of a column. Names are the safetensors dtype names, so a manifest and a
/// shard header spell them the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// 64-bit float.
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 64-bit integer.
    U64,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 8-bit integer.
    U8,
    /// One byte, 0 or 1.
    #[serde(rename = "BOOL")]
    Bool,
}

impl DType {
    /// Every dtype, widest first.
    pub const ALL: [DType; 13] = [
        DType::F64,
        DType::I64,
        DType::U64,
        DType::F32,
        DType::I32,
        DType::U32,
        DType::F16,
        DType::BF16,
        DType::I16,
        DType::U16,
        DType::U8,
        DType::I8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::U8 | DType::I8 | DType::Bool => 1,
        }
    }

    /// The safetensors name (`F32`, `BF16`, `BOOL`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    /// The little-endian numpy type string (`<f4`, `|u1`, ...); bfloat16 has none.
    pub fn numpy_descr(self) -> Option<&'static str> {
        Some(match self {
            DType::F64 => "<f8",
            DType::F32 => "<f4",
            DType::F16 => "<f2",
            DType::BF16 => return None,
            DType::I64 => "<i8",
            DType::I32 => "<i4",
            DType::I16 => "<i2",
            DType::I8 => "|i1",
            DType::U64 => "<u8",
            DType::U32 => "<u4",
            DType::U16 => "<u2",
            DType::U8 => "|u1",
            DType::Bool => "|b1",
        })
    }

    /// Parses a numpy type string. The result says whether the data is big-endian and
    /// must be byte-swapped to become this dtype.
    pub fn from_numpy_descr(descr: &str) -> Option<(DType, bool)> {
        let (order, code) = descr.split_at_checked(1)?;
        let big = match order {
            "<" | "|" | "=" => false,
            ">" => true,
            _ => return None,
        };
        let dtype = DType::ALL
            .into_iter()
            .find(|d| d.numpy_descr().is_some_and(|n| &n[1..] == code))?;
        Some((dtype, big && dtype.size() > 1))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_lowercase())
    }
}

impl FromStr for DType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        DType::ALL
            .into_iter()
            .find(|d| d.name() == upper)
            .ok_or_else(|| {
                format!("unknown dtype `{s}`; expected one of f64, f32, f16, bf16, i64, i32, i16, i8, u64, u32, u16, u8, bool")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
            assert_eq!(d.to_string().parse::<DType>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            if let Some(descr) = d.numpy_descr() {
                assert_eq!(DType::from_numpy_descr(descr), Some((d, false)));
            }
        }
        assert_eq!(DType::from_numpy_descr(">f4"), Some((DType::F32, true)));
        assert_eq!(DType::from_numpy_descr(">u1"), Some((DType::U8, false)));
        assert_eq!(DType::from_numpy_descr("<c8"), None);
        assert!("float".parse::<DType>().is_err());
    }
}
