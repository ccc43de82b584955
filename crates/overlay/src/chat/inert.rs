//! Text from peers, made inert for a terminal.
//!
//! A nickname or message is whatever its author typed, and a terminal obeys some characters:
//! C0 and C1 controls start ANSI/ECMA-48 sequences (colors, cursor moves, OSC 52 writes the
//! clipboard, OSC 8 makes links), a newline fakes a line from someone else, and bidi overrides
//! reorder what is shown (`txt.exe` displayed as `exe.txt`). [`inert`] replaces each such
//! character with a visible escape (`\u{1b}`), so the text is shown, never executed. The chat
//! service applies it to every peer-supplied string it reports, so the terminal UI and the
//! `--script` JSON lines both carry inert text.

use std::fmt::Write;

/// Whether `c` changes how a terminal shows what follows instead of being shown itself.
fn is_active(c: char) -> bool {
    // `is_control` is Unicode's Cc: C0 (U+0000-U+001F), DEL and C1 (U+0080-U+009F).
    c.is_control()
        || matches!(c,
            // Bidi marks, embeddings, overrides and isolates.
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators: a line break to some renderers.
            | '\u{2028}' | '\u{2029}')
}

/// `text` with every control, bidi and line-separator character replaced by `\u{HEX}`.
pub fn inert(text: &str) -> String {
    if !text.chars().any(is_active) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_active(c) {
            // Writing to a String never fails.
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_bidi_overrides_become_visible_text() {
        let osc52 = "\u{1b}]52;c;cm0gLXJmIH4=\u{7}";
        let csi_c1 = "\u{9b}2J";
        let hostile = format!("hi{osc52}{csi_c1}\nfake line\r\u{202e}exe.txt\u{2066}");
        let shown = inert(&hostile);
        assert!(!shown.chars().any(is_active), "{shown:?}");
        assert_eq!(
            shown,
            "hi\\u{1b}]52;c;cm0gLXJmIH4=\\u{7}\\u{9b}2J\\u{a}fake line\\u{d}\\u{202e}exe.txt\\u{2066}"
        );
        // Ordinary text, emoji with joiners and other scripts pass unchanged.
        for fine in ["héllo wörld", "👩‍💻 ok", "שלום", "日本語"] {
            assert_eq!(inert(fine), fine);
        }
    }
}
