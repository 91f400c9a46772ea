//! Tokens of the label selector language.

use super::SelectorError;

/// One token of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    Identifier(String),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Greater,
    Less,
}

fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | '!' | '<' | '>')
}

/// Splits `input` into tokens.
pub(super) fn tokenize(input: &str) -> Result<Vec<Token>, SelectorError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            ',' => Token::Comma,
            '(' => Token::Open,
            ')' => Token::Close,
            '<' => Token::Less,
            '>' => Token::Greater,
            '=' => {
                if chars.next_if(|(_, c)| *c == '=').is_some() {
                    Token::DoubleEquals
                } else {
                    Token::Equals
                }
            }
            '!' => {
                if chars.next_if(|(_, c)| *c == '=').is_some() {
                    Token::NotEquals
                } else {
                    Token::Not
                }
            }
            _ => {
                let mut end = at + c.len_utf8();
                while let Some((i, c)) = chars.next_if(|(_, c)| !is_special(*c)) {
                    end = i + c.len_utf8();
                }
                // `in` and `notin` are operators only right after a key; elsewhere (as keys or
                // values) they are ordinary names.
                let after_key = matches!(tokens.last(), Some(Token::Identifier(_)));
                match &input[at..end] {
                    "in" if after_key => Token::In,
                    "notin" if after_key => Token::NotIn,
                    word => Token::Identifier(word.to_string()),
                }
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}
