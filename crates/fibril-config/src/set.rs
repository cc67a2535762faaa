//! Helm `--set` syntax: `key=value`, several pairs in one argument separated by commas
//! (`a=1,b=2`), list values in braces (`k={10.0.0.0/8,172.16.0.0/12}`, whose commas do
//! not split pairs), quotes around values, `\,` for a literal comma. Several arguments
//! apply in order, later ones winning.

use crate::error::ConfigError;
use crate::model::Config;

/// Splits one `--set` argument into `(key, value)` pairs.
pub fn parse_set_arg(arg: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let syntax = |part: &str, reason: &str| ConfigError::Syntax {
        arg: part.to_owned(),
        reason: reason.to_owned(),
    };
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = arg.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(',') => cur.push(','),
                Some(c) => {
                    cur.push('\\');
                    cur.push(c);
                }
                None => return Err(syntax(arg, "trailing backslash")),
            },
            '"' | '\'' if quote == Some(ch) => {
                quote = None;
                cur.push(ch);
            }
            '"' | '\'' if quote.is_none() => {
                quote = Some(ch);
                cur.push(ch);
            }
            '{' | '[' if quote.is_none() => {
                depth += 1;
                cur.push(ch);
            }
            '}' | ']' if quote.is_none() => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| syntax(arg, "closing bracket without opening one"))?;
                cur.push(ch);
            }
            ',' if quote.is_none() && depth == 0 => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(syntax(arg, "unterminated quote"));
    }
    if depth != 0 {
        return Err(syntax(arg, "unbalanced braces (lists are written {a,b})"));
    }
    parts.push(cur);
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            return Err(syntax(
                &part,
                "expected key=value (list values go in braces: key={a,b})",
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(syntax(&part, "empty key"));
        }
        if key.contains(['[', ']', ' ', '\t', '"', '\'', '{', '}']) {
            return Err(syntax(
                &part,
                "keys are dotted Helm names (index syntax key[0]= is not supported; use key={a,b})",
            ));
        }
        out.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(out)
}

impl Config {
    /// Applies one `--set` argument (one or more comma-separated pairs), all or nothing.
    pub fn apply_set(&mut self, arg: &str) -> Result<(), ConfigError> {
        let pairs = parse_set_arg(arg)?;
        let mut next = self.clone();
        for (k, v) in &pairs {
            next.set(k, v)?;
        }
        *self = next;
        Ok(())
    }

    /// Applies several `--set` arguments in order, all or nothing. Does not run
    /// [`Config::validate`]: call it once all overrides are in.
    pub fn apply_sets<I, S>(&mut self, args: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut next = self.clone();
        for a in args {
            next.apply_set(a.as_ref())?;
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pairs_outside_braces() {
        let p = parse_set_arg("a=1,b={x,y},c='q,r',d=e\\,f").unwrap();
        assert_eq!(
            p,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "{x,y}".into()),
                ("c".into(), "'q,r'".into()),
                ("d".into(), "e,f".into()),
            ]
        );
        assert_eq!(parse_set_arg("k=").unwrap(), vec![("k".into(), "".into())]);
        assert_eq!(
            parse_set_arg("k=a=b").unwrap(),
            vec![("k".into(), "a=b".into())]
        );
    }

    #[test]
    fn syntax_errors_name_the_part() {
        for (arg, part) in [
            ("a=1,10.0.0.0/8", "10.0.0.0/8"),
            ("=1", "=1"),
            ("k={a,b", "k={a,b"),
            ("k=a}", "k=a}"),
            ("k='a", "k='a"),
            ("k[0]=a", "k[0]=a"),
        ] {
            let e = parse_set_arg(arg).unwrap_err();
            let ConfigError::Syntax { arg: got, .. } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(got, part, "{e}");
        }
    }
}
