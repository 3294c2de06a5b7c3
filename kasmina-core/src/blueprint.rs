//! Blueprint types (SPEC 4) and grafting strategies (SPEC 6).

/// Defines a `#[repr(u8)]` enum with checked conversion from its raw value,
/// `raw()`, `ALL`, a SCREAMING_CASE name and serde as that name.
macro_rules! raw_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $valid:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in order of the raw value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The raw value stored in state arrays and on devices.
            pub const fn raw(self) -> u8 {
                self as u8
            }

            /// The SPEC's name (e.g. `FOSSILIZED`).
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Checked conversion from a raw value: unknown values are an error, never a panic.
            pub fn from_raw(raw: u8) -> crate::Result<Self> {
                match raw {
                    $($value => Ok($name::$variant),)+
                    v => Err(crate::Error::InvalidEnum { kind: stringify!($name), value: v as u64, valid: $valid }),
                }
            }

            /// Parses the SPEC's name, case-insensitively (`fossilized`, `FOSSILIZED`).
            pub fn from_name(name: &str) -> Option<Self> {
                let n = name.trim().to_ascii_uppercase().replace('-', "_");
                match n.as_str() { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl TryFrom<u8> for $name {
            type Error = crate::Error;
            fn try_from(raw: u8) -> crate::Result<Self> {
                Self::from_raw(raw)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::from_name(s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                    format!("unknown {} '{}' (one of {})", stringify!($name), s, names.join(", "))
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use raw_enum;

raw_enum! {
    /// What a germinated seed grows (SPEC 4).
    BlueprintType, "0..=3" {
        /// `t_j = x_j + w_j * s`.
        Residual = 0 => "RESIDUAL",
        /// `t_j = x_j * softmax(w)_j`.
        Attention = 1 => "ATTENTION",
        /// `t_j = relu(x_j * w_j) * s`.
        Mlp = 2 => "MLP",
        /// `t_j = s * (w_0 x_j + w_1 x_{j-1} + w_2 x_{j-2})`, causal inside the chunk.
        Conv = 3 => "CONV",
    }
}

raw_enum! {
    /// How alpha advances while a seed is GRAFTING (SPEC 6).
    GraftingStrategy, "0..=3" {
        /// `alpha += 1 / ramp_epochs`.
        FixedRamp = 0 => "FIXED_RAMP",
        /// `alpha += (1 / ramp_epochs) * 2 * sigmoid(k * improvement)`.
        PerformanceLinked = 1 => "PERFORMANCE_LINKED",
        /// As FIXED_RAMP, holding while `drift > drift_threshold`.
        DriftControlled = 2 => "DRIFT_CONTROLLED",
        /// As FIXED_RAMP, holding while `grad_norm` is outside `[grad_lower, grad_upper]`.
        GradNormGated = 3 => "GRAD_NORM_GATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip_and_unknown_values_are_errors() {
        for t in BlueprintType::ALL {
            assert_eq!(BlueprintType::from_raw(t.raw()).unwrap(), *t);
        }
        for s in GraftingStrategy::ALL {
            assert_eq!(GraftingStrategy::try_from(s.raw()).unwrap(), *s);
        }
        for v in 4..=255u8 {
            assert!(BlueprintType::from_raw(v).is_err());
            assert!(GraftingStrategy::from_raw(v).is_err());
        }
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("conv".parse::<BlueprintType>().unwrap(), BlueprintType::Conv);
        assert_eq!("grad-norm-gated".parse::<GraftingStrategy>().unwrap(), GraftingStrategy::GradNormGated);
        assert!("linear".parse::<BlueprintType>().is_err());
    }
}
