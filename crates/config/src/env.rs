//! Expansion of `${VAR}` and `${VAR:-default}` references inside string
//! values. `$$` stands for a literal `$`.

/// What expanding one string produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expanded {
    pub value: String,
    /// Names of the variables that were referenced.
    pub variables: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// The variables are unset (or empty) and had no default.
    Missing(Vec<String>),
    /// A `${` without its `}`, or an invalid variable name.
    Syntax(String),
}

pub(crate) fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, ExpandError> {
    let mut value = String::with_capacity(text.len());
    let mut variables = Vec::new();
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        value.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            value.push('$');
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            value.push('$');
            rest = after;
            continue;
        };
        let Some(close) = body_start.find('}') else {
            return Err(ExpandError::Syntax(
                "a `${` is never closed with `}`".to_owned(),
            ));
        };
        let body = &body_start[..close];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || character == '_')
            || name.starts_with(|character: char| character.is_ascii_digit())
        {
            return Err(ExpandError::Syntax(format!(
                "`${{{body}}}` is not a valid reference: names use letters, digits and `_`"
            )));
        }
        variables.push(name.to_owned());
        match lookup(name).filter(|found| !found.is_empty()) {
            Some(found) => value.push_str(&found),
            None => match default {
                Some(default) => value.push_str(default),
                None => missing.push(name.to_owned()),
            },
        }
        rest = &body_start[close + 1..];
    }
    value.push_str(rest);
    if missing.is_empty() {
        Ok(Expanded { value, variables })
    } else {
        Err(ExpandError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("secret".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_defaults_and_escapes() {
        let expanded = expand("a-${KEY}-${NOPE:-dflt}-$$-$x", &lookup).unwrap();
        assert_eq!(expanded.value, "a-secret-dflt-$-$x");
        assert_eq!(expanded.variables, vec!["KEY", "NOPE"]);
    }

    #[test]
    fn unset_and_empty_variables_are_missing() {
        assert_eq!(
            expand("${NOPE}${EMPTY}${KEY}", &lookup),
            Err(ExpandError::Missing(vec!["NOPE".into(), "EMPTY".into()]))
        );
    }

    #[test]
    fn bad_syntax_is_reported() {
        assert!(matches!(
            expand("${KEY", &lookup),
            Err(ExpandError::Syntax(_))
        ));
        assert!(matches!(
            expand("${1A}", &lookup),
            Err(ExpandError::Syntax(_))
        ));
        assert!(matches!(
            expand("${}", &lookup),
            Err(ExpandError::Syntax(_))
        ));
    }
}
