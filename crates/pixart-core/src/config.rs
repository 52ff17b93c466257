//! Reading JSON config files (diffusers `config.json`, `model_index.json`, ...).
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// The first key that an object of the JSON text `json` holds twice, as its path (`prompt`,
/// `vae.block_out_channels`, `layers[2].name`); `None` when there is none, or when `json` is
/// not JSON (the caller's parse reports that). serde_json keeps the last of duplicate keys
/// silently, so a config or request saying two things would be read as one of them.
pub fn duplicate_key(json: &[u8]) -> Option<String> {
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let _ = serde::de::DeserializeSeed::deserialize(
        DuplicateKeys {
            path: String::new(),
            found: &found,
        },
        &mut de,
    );
    found.into_inner()
}

/// A walk over any JSON value that stops at the first key an object holds twice.
struct DuplicateKeys<'a> {
    path: String,
    found: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DuplicateKeys<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DuplicateKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(DuplicateKeys {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                *self.found.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value_seed(DuplicateKeys {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }
}

/// Reads and deserialises a JSON file; errors name the file and the offending key or line
/// (a key given twice too: [`duplicate_key`]).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if let Some(key) = duplicate_key(text.as_bytes()) {
        return Err(Error::config(
            path,
            format!("invalid config: key `{key}` is given twice"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // `?`: the error came before any key (a syntax error at the top level).
        if key.is_empty() || key == "." || key == "?" {
            Error::config(path, format!("invalid config: {inner}"))
        } else {
            Error::config(path, format!("invalid config: key `{key}`: {inner}"))
        }
    })
}

/// Which model class a component's `config.json` may describe: the value of `key`
/// (`_class_name` in diffusers configs, `model_type` in transformers ones), where present,
/// must be one of `names`.
#[derive(Debug, Clone, Copy)]
pub struct ConfigClass {
    /// What the component is, for messages ("a transformer").
    pub component: &'static str,
    pub key: &'static str,
    pub names: &'static [&'static str],
}

/// Reads a component's `config.json`: a JSON object (not an array, whose values serde would
/// take by position) of the class `class` names, so that a config of another component
/// (a VAE's given as the transformer's) is refused instead of read as defaults.
pub fn read_component_config<T: DeserializeOwned>(path: &Path, class: ConfigClass) -> Result<T> {
    let value: serde_json::Value = read_json(path)?;
    let Some(object) = value.as_object() else {
        return Err(Error::config(path, "invalid config: expected a JSON object"));
    };
    // diffusers configs name their class in `_class_name`, transformers ones in `model_type`:
    // the other family's key marks a config of another component.
    for other in ["_class_name", "model_type"].into_iter().filter(|k| *k != class.key) {
        if let Some(found) = object.get(other).and_then(|v| v.as_str()) {
            return Err(Error::config(
                path,
                format!(
                    "`{other}` is `{found}`, not {} ({})",
                    class.component,
                    class.names.join(" or ")
                ),
            ));
        }
    }
    if let Some(found) = object.get(class.key).and_then(|v| v.as_str()) {
        if !class.names.contains(&found) {
            return Err(Error::config(
                path,
                format!(
                    "`{}` is `{found}`, not {} ({})",
                    class.key,
                    class.component,
                    class.names.join(" or ")
                ),
            ));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        Error::config(path, format!("invalid config: key `{key}`: {}", e.into_inner()))
    })
}

/// Refuses sizes above their bounds, before anything is allocated from them:
/// `(key, value, at most)`. The message names the key.
pub fn check_at_most(bounds: &[(&str, usize, usize)]) -> std::result::Result<(), String> {
    match bounds.iter().find(|(_, v, max)| v > max) {
        Some((key, v, max)) => Err(format!("`{key}` is {v}, more than this engine supports ({max})")),
        None => Ok(()),
    }
}

/// The most parameters a component config may describe (400 GB in f32): beyond it the
/// weights cannot be allocated on any machine this runs on.
pub const MAX_PARAMETERS: u128 = 100_000_000_000;

/// Refuses a config whose parameter count (computed in u128, so it cannot overflow) exceeds
/// [`MAX_PARAMETERS`].
pub fn check_parameters(parameters: u128) -> std::result::Result<(), String> {
    if parameters > MAX_PARAMETERS {
        return Err(format!(
            "these sizes describe a model of {parameters} parameters, more than this engine supports ({MAX_PARAMETERS})"
        ));
    }
    Ok(())
}

/// Writes `value` as pretty JSON, atomically (temp file + rename).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::config(path, format!("cannot serialise: {e}")))?;
    crate::files::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_given_twice_are_found_and_refused() {
        assert_eq!(duplicate_key(br#"{"a": 1, "b": 2, "a": 3}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_key(br#"{"a": {"x": [1, {"k": 1, "k": 2}]}}"#).as_deref(),
            Some("a.x[1].k")
        );
        // The same key in two objects, and no JSON at all, are not duplicates.
        assert_eq!(
            duplicate_key(br#"{"a": {"k": 1}, "b": {"k": [null, true, "s", 1.5, -2]}}"#),
            None
        );
        assert_eq!(duplicate_key(b"{not json"), None);
        let dir = std::env::temp_dir().join(format!("pixart-core-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        std::fs::write(&p, r#"{"num_layers": 2, "num_layers": 28}"#).unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("key `num_layers` is given twice"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    const VAE: ConfigClass = ConfigClass {
        component: "a VAE",
        key: "_class_name",
        names: &["AutoencoderKL"],
    };

    #[derive(serde::Deserialize, Debug)]
    struct Sizes {
        #[serde(default)]
        a: usize,
    }

    fn read(text: &str) -> Result<Sizes> {
        let dir = std::env::temp_dir().join(format!("pixart-core-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.json",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, text).unwrap();
        let r = read_component_config(&path, VAE);
        std::fs::remove_file(&path).ok();
        r
    }

    #[test]
    fn component_configs_must_be_objects_of_their_class() {
        assert_eq!(read(r#"{"_class_name": "AutoencoderKL", "a": 3}"#).unwrap().a, 3);
        assert_eq!(read(r#"{"a": 4}"#).unwrap().a, 4);
        let e = read(r#"{"_class_name": "PixArtTransformer2DModel"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`_class_name` is `PixArtTransformer2DModel`, not a VAE (AutoencoderKL)"),
            "{e}"
        );
        let e = read(r#"{"model_type": "t5", "a": 1}"#).unwrap_err().to_string();
        assert!(e.contains("`model_type` is `t5`, not a VAE"), "{e}");
        let e = read("[1, 2]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = read(r#"{"a": "x"}"#).unwrap_err().to_string();
        assert!(e.contains("key `a`"), "{e}");
    }

    #[test]
    fn bounds_name_the_key() {
        assert!(check_at_most(&[("a", 3, 3), ("b", 0, 1)]).is_ok());
        let e = check_at_most(&[("a", 3, 3), ("b", 2, 1)]).unwrap_err();
        assert_eq!(e, "`b` is 2, more than this engine supports (1)");
        assert!(check_parameters(MAX_PARAMETERS).is_ok());
        assert!(check_parameters(MAX_PARAMETERS + 1).unwrap_err().contains("parameters"));
    }
}
