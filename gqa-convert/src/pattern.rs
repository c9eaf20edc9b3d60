//! Tensor-name patterns: literal text, `{i}` for a layer number, `*` for
//! anything, and one `{kv}` slot where the K and V names differ.

use crate::Res;

/// A name pattern: literal text, `{i}` (digits), `*` (anything), and one
/// `{kv}` slot with its K and V spellings.
#[derive(Debug)]
pub(crate) struct Pattern {
    pub(crate) text: String,
    pub(crate) parts: Vec<Part>,
    pub(crate) k: String,
    pub(crate) v: String,
}

#[derive(Debug)]
pub(crate) enum Part {
    Lit(String),
    Digits,
    Any,
    Kv,
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Res<Pattern> {
        let (mut parts, mut kv) = (Vec::new(), None);
        let mut rest = text;
        let mut lit = String::new();
        while let Some(c) = rest.chars().next() {
            if c == '*' {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
                parts.push(Part::Any);
                rest = &rest[1..];
            } else if let Some(r) = rest.strip_prefix("{i}") {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
                parts.push(Part::Digits);
                rest = r;
            } else if rest.starts_with("{kv") {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("pattern `{text}`: unclosed `{{kv`"))?;
                let spec = &rest[3..end];
                let pair = match spec.strip_prefix(':') {
                    None if spec.is_empty() => ("k".to_string(), "v".to_string()),
                    Some(s) => match s.split_once(',') {
                        Some((k, v)) if !k.is_empty() && !v.is_empty() && k != v => {
                            (k.to_string(), v.to_string())
                        }
                        _ => {
                            return Err(format!(
                                "pattern `{text}`: `{{kv:K,V}}` needs two different names"
                            ))
                        }
                    },
                    None => {
                        return Err(format!(
                            "pattern `{text}`: unknown slot `{}`",
                            &rest[..=end]
                        ))
                    }
                };
                if kv.replace(pair).is_some() {
                    return Err(format!("pattern `{text}`: more than one `{{kv}}`"));
                }
                parts.push(Part::Lit(std::mem::take(&mut lit)));
                parts.push(Part::Kv);
                rest = &rest[end + 1..];
            } else {
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        parts.push(Part::Lit(lit));
        let (k, v) = kv.ok_or_else(|| {
            format!("pattern `{text}` has no `{{kv}}` slot (where the names of K and V differ)")
        })?;
        parts.retain(|p| !matches!(p, Part::Lit(s) if s.is_empty()));
        Ok(Pattern {
            text: text.to_string(),
            parts,
            k,
            v,
        })
    }

    /// If `name` is a K tensor of this pattern, the name of its V partner.
    pub(crate) fn v_partner(&self, name: &str) -> Option<String> {
        let mut kv_at = None;
        if !matches(&self.parts, name, 0, &self.k, &mut kv_at) {
            return None;
        }
        let at = kv_at?;
        Some(format!(
            "{}{}{}",
            &name[..at],
            self.v,
            &name[at + self.k.len()..]
        ))
    }
}

/// Backtracking match of `parts` against `s[pos..]`; records where the
/// `{kv}` slot matched.
pub(crate) fn matches(
    parts: &[Part],
    s: &str,
    pos: usize,
    k: &str,
    kv_at: &mut Option<usize>,
) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return pos == s.len();
    };
    let tail = &s[pos..];
    match first {
        Part::Lit(l) => tail.starts_with(l.as_str()) && matches(rest, s, pos + l.len(), k, kv_at),
        Part::Kv => {
            if tail.starts_with(k) && matches(rest, s, pos + k.len(), k, kv_at) {
                *kv_at = Some(pos);
                true
            } else {
                false
            }
        }
        Part::Digits => {
            let n = tail.bytes().take_while(u8::is_ascii_digit).count();
            (1..=n).any(|m| matches(rest, s, pos + m, k, kv_at))
        }
        Part::Any => (0..=tail.len())
            .filter(|&m| tail.is_char_boundary(m))
            .any(|m| matches(rest, s, pos + m, k, kv_at)),
    }
}
