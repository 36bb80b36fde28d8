//! The BERT WordPiece tokenizer of all-MiniLM-L6-v2, from its `vocab.txt`: the steps of the
//! model's `tokenizer.json` (BertNormalizer with lowercasing and accent stripping, BertPreTokenizer,
//! WordPiece with `##` continuations, `[CLS] ... [SEP]`), written out so that the model needs no
//! tokenizer library. Truncation keeps the first tokens and always ends with `[SEP]`.

use std::collections::HashMap;
use std::path::Path;

use sage_core::{Error, Result};
use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::UnicodeNormalization;

/// Longer words are one `[UNK]` (the model's `max_input_chars_per_word`).
const MAX_CHARS_PER_WORD: usize = 100;
const CONTINUATION: &str = "##";

/// A WordPiece vocabulary and the ids of its special tokens.
#[derive(Clone, Debug)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
}

/// `\t`, `\n`, `\r` and the Unicode space separators count as whitespace (BERT's `_is_whitespace`).
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
        || get_general_category(c) == GeneralCategory::SpaceSeparator
}

/// Control and format characters other than whitespace are dropped (BERT's `_is_control`).
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Unassigned
            | GeneralCategory::PrivateUse
    )
}

/// ASCII symbols (`$`, `+`, `^`, ... are punctuation to BERT too) and every Unicode `P*` category.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            GeneralCategory::ConnectorPunctuation
                | GeneralCategory::DashPunctuation
                | GeneralCategory::OpenPunctuation
                | GeneralCategory::ClosePunctuation
                | GeneralCategory::InitialPunctuation
                | GeneralCategory::FinalPunctuation
                | GeneralCategory::OtherPunctuation
        )
}

/// The CJK ideograph blocks BERT isolates as single-character words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// BertNormalizer: clean the text, space out CJK ideographs, strip accents (NFD, drop `Mn`) and
/// lowercase, in that order.
fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    cleaned
        .nfd()
        .filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark)
        .collect::<String>()
        .to_lowercase()
}

/// BertPreTokenizer: split on whitespace, and make every punctuation character a word of its own.
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for chunk in text.split(char::is_whitespace) {
        let mut word = String::new();
        for c in chunk.chars() {
            if is_punctuation(c) {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                words.push(c.to_string());
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    words
}

impl WordPiece {
    /// Reads `vocab.txt`: one token per line, its id the line number.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        WordPiece::from_vocab_text(&text, &path.display().to_string())
    }

    /// A vocabulary from the text of a `vocab.txt`; `origin` names it in errors.
    pub fn from_vocab_text(text: &str, origin: &str) -> Result<Self> {
        let vocab: HashMap<String, u32> = text
            .lines()
            .enumerate()
            .map(|(i, token)| (token.to_string(), i as u32))
            .collect();
        let id = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| Error::Format {
                path: origin.to_string(),
                reason: format!("the vocabulary has no `{token}` token"),
            })
        };
        Ok(WordPiece {
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            vocab,
        })
    }

    /// Greedy longest-match WordPiece of one word; a word with an unmatched piece is `[UNK]`.
    fn word_pieces(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_CHARS_PER_WORD {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut piece: String = chars[start..end].iter().collect();
                if start > 0 {
                    piece.insert_str(0, CONTINUATION);
                }
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => {
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
        out.extend(pieces);
    }

    /// `[CLS] pieces [SEP]`, at most `max_len` ids (at least 2): a longer text keeps its first
    /// `max_len - 2` pieces.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = vec![self.cls];
        for word in pre_tokenize(&normalize(text)) {
            self.word_pieces(&word, &mut ids);
        }
        ids.truncate(max_len.max(2) - 1);
        ids.push(self.sep);
        ids
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab =
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\ncafe\nis\nun\n##aff\n##able\n!\n,\n##s\nhello\n好";
        WordPiece::from_vocab_text(vocab, "test").unwrap()
    }

    #[test]
    fn normalizes_splits_and_matches_pieces() {
        let wp = tiny();
        // accents stripped, lowercased, punctuation isolated, ## continuations, unknown word
        assert_eq!(
            wp.encode("The  CAFÉ is unaffable, hellos!\tzzz", 64),
            vec![2, 4, 5, 6, 7, 8, 9, 11, 13, 12, 10, 1, 3]
        );
        // CJK characters are words of their own; control characters vanish
        assert_eq!(wp.encode("好\u{7}好", 64), vec![2, 14, 14, 3]);
        // truncation keeps [SEP] last
        assert_eq!(wp.encode("the the the the", 4), vec![2, 4, 4, 3]);
        assert_eq!(wp.encode("", 8), vec![2, 3]);
    }

    #[test]
    fn a_vocabulary_without_special_tokens_is_refused() {
        let e = WordPiece::from_vocab_text("a\nb\n", "v.txt").unwrap_err();
        assert!(e.to_string().contains("[UNK]"), "{e}");
    }
}
