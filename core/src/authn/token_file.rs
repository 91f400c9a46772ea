//! Static bearer tokens from a CSV file, in kube-apiserver's `--token-auth-file` format:
//! `token,user,uid[,"group1,group2"]` per line.

use crate::apiserver::{ApiError, Authenticator, UserInfo};
use async_trait::async_trait;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::path::Path;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line lacks a token or a user.
    #[error("line {line}: expected token,user,uid[,\"groups\"]")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
}

/// Authenticates `Authorization: Bearer` tokens listed in a file.
#[derive(Debug, Clone, Default)]
pub struct TokenFileAuthenticator {
    users: HashMap<String, UserInfo>,
}

fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

impl TokenFileAuthenticator {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = fields(line);
            let (Some(token), Some(name)) = (fields.first(), fields.get(1)) else {
                return Err(TokenFileError::Malformed { line: index + 1 });
            };
            if token.is_empty() || name.is_empty() {
                return Err(TokenFileError::Malformed { line: index + 1 });
            }
            let mut groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            groups.push(super::AUTHENTICATED_GROUP.into());
            users.insert(
                token.clone(),
                UserInfo {
                    name: name.clone(),
                    groups,
                },
            );
        }
        Ok(TokenFileAuthenticator { users })
    }

    /// Reads and parses a token file.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}

#[async_trait]
impl Authenticator for TokenFileAuthenticator {
    async fn authenticate(&self, request: &Parts) -> Result<Option<UserInfo>, ApiError> {
        let Some(token) = super::bearer_token(request) else {
            return Ok(None);
        };
        // A token shaped like a JWT belongs to the service-account authenticator.
        if token.matches('.').count() == 2 && !self.users.contains_key(token) {
            return Ok(None);
        }
        match self.users.get(token) {
            Some(user) => Ok(Some(user.clone())),
            None => Err(ApiError::unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Parts {
        let mut builder = axum::http::Request::builder();
        if let Some(token) = token {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn tokens_name_users_and_groups_and_unknown_tokens_are_refused() {
        let file = TokenFileAuthenticator::parse(
            "# comment\nsecret1,alice,1,\"dev,ops\"\nsecret2,bob,2\n",
        )
        .unwrap();
        let alice = file.authenticate(&request(Some("secret1"))).await.unwrap();
        assert_eq!(
            alice,
            Some(UserInfo {
                name: "alice".into(),
                groups: vec!["dev".into(), "ops".into(), "system:authenticated".into()],
            })
        );
        let bob = file.authenticate(&request(Some("secret2"))).await.unwrap();
        assert_eq!(bob.unwrap().groups, vec!["system:authenticated"]);
        assert_eq!(file.authenticate(&request(None)).await.unwrap(), None);
        let wrong = file.authenticate(&request(Some("nope"))).await.unwrap_err();
        assert_eq!(wrong.code, 401);
        assert!(TokenFileAuthenticator::parse("onlytoken\n").is_err());
    }
}
