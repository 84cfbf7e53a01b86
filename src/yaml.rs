//! YAML, behind one module: `serde_yaml` is deprecated upstream, so a
//! maintained fork can replace it here alone.

/// Serialises `value` as YAML.
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(value)
}

/// Parses every document of a multi-document YAML text.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, serde_yaml::Error> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}
