//! TOML errors as operators read them: one line naming the dotted key, its line and column,
//! and what is wrong.

/// One line naming the key, the position and what is wrong, e.g. "`limits.max_pakcet_size`
/// (line 2, column 1): unknown field ...". toml's own `Display` is a multi-line snippet
/// that names only the last key segment; the dotted path is what an operator greps for.
pub(super) fn describe(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    let Some(span) = err.span() else {
        return message.to_string();
    };
    let (line, column) = line_column(text, span.start);
    match key_path_at(text, span.start) {
        Some(key) => format!("`{key}` (line {line}, column {column}): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let mut end = pos.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key whose name or value covers byte offset `pos`, if the text is valid TOML
/// (a syntax error has no key to name).
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_key(root.get_ref(), pos, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        // Innermost first: a `[limits]` table spans its keys, and the error is about one.
        let nested = match value.get_ref() {
            toml::de::DeValue::Table(inner) => find_key(inner, pos, path),
            _ => false,
        };
        if nested || key.span().contains(&pos) || value.span().contains(&pos) {
            return true;
        }
        path.pop();
    }
    false
}
