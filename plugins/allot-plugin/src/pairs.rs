//! Lists of key/value pairs: tags, environment variables, node labels.
//!
//! The host sends each such list sorted by key with each key once; these
//! functions keep it so.

/// The value of `key`, if the list has it.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Sets `key` to `value`, replacing any value it had, keeping the list
/// sorted by key.
pub fn insert(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    match pairs.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
        Ok(i) => pairs[i].1 = value.to_string(),
        Err(i) => pairs.insert(i, (key.to_string(), value.to_string())),
    }
}

/// Removes `key` and returns its value, if the list had it.
pub fn remove(pairs: &mut Vec<(String, String)>, key: &str) -> Option<String> {
    let i = pairs.iter().position(|(k, _)| k == key)?;
    Some(pairs.remove(i).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn insert_keeps_keys_sorted_and_unique() {
        let mut tags = pairs(&[("a", "1"), ("c", "3")]);
        insert(&mut tags, "b", "2");
        insert(&mut tags, "c", "three");
        assert_eq!(tags, pairs(&[("a", "1"), ("b", "2"), ("c", "three")]));
    }

    #[test]
    fn get_and_remove() {
        let mut tags = pairs(&[("team", "cv")]);
        assert_eq!(get(&tags, "team"), Some("cv"));
        assert_eq!(get(&tags, "cost-center"), None);
        assert_eq!(remove(&mut tags, "team"), Some("cv".to_string()));
        assert!(tags.is_empty());
    }
}
