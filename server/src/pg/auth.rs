//! pgwire's side of authentication: the SCRAM-SHA-256 exchange pgwire runs looks its
//! verifiers up here, in the users the edge keeps ([`crate::edge`]'s `Users`).

use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::ScramSecret;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};

use crate::edge::Users;

/// pgwire's view of [`Users`].
#[derive(Debug)]
pub(crate) struct UserSource(pub(crate) Arc<Users>);

#[async_trait]
impl AuthSource for UserSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_string(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let keys = self.0.scram_keys(login.user().unwrap_or_default());
        Ok((
            ScramSecret::Verifier {
                salt: keys.salt,
                iterations: keys.iterations,
                stored_key: keys.stored_key,
                server_key: keys.server_key,
            },
            None,
        ))
    }
}
