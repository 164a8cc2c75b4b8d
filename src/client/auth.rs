//! Token authentication on the client side: the secret of
//! [`super::ClientOptions::token`] goes with every call as the metadata
//! `authorization: Bearer SECRET`.
//!
//! Every call of a [`super::Client`] — creating, keeping alive and closing
//! its session, each primitive's calls and streams, watches, `sessions`,
//! `revoke` — goes through one [`Transport`]: the connection's channel
//! wrapped in the [`Bearer`] interceptor, which adds the header. Without a
//! token the interceptor adds nothing, so a server without
//! `--auth-tokens` sees exactly what it saw before.

use std::fmt;

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Request, Status,
};

use super::Error;

/// The metadata key the secret travels in.
const AUTHORIZATION: &str = "authorization";

/// The longest secret the client sends, in bytes: far more than any real
/// secret, small enough for any HTTP/2 header limit.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// The channel every call of a [`super::Client`] goes through: the
/// connection, with the client's token (if any) added to each request.
/// Build a generated client on it, e.g. `LocksClient::new(client.transport())`.
pub type Transport = InterceptedService<Channel, Bearer>;

/// The interceptor that adds `authorization: Bearer SECRET` to every request
/// (nothing without a token). Its `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// An interceptor that sends `token` (`None`: sends nothing). The token
    /// is checked first, see [`check_token`]: an [`Error::InvalidAddress`]
    /// (which never quotes the secret) if it cannot be sent.
    pub fn new(token: Option<&str>) -> Result<Bearer, Error> {
        let Some(token) = token else {
            return Ok(Bearer(None));
        };
        check_token(token).map_err(|why| {
            Error::InvalidAddress(format!(
                "the token cannot be used: {why}; give the secret of a token from the \
                 server's --auth-tokens file"
            ))
        })?;
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Error::InvalidAddress("the token cannot be used: not a valid header value".into())
        })?;
        // Kept out of HPACK's dynamic table, so that it cannot be guessed
        // from compressed sizes.
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }

    /// Whether this interceptor sends a token.
    pub fn has_token(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_some() {
            "Some(<secret>)"
        } else {
            "None"
        };
        f.debug_tuple("Bearer")
            .field(&format_args!("{shown}"))
            .finish()
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// Checks that `token` can be sent as a bearer secret: 1 to
/// [`TOKEN_BYTES_MAX`] bytes of printable ASCII without spaces (what
/// `syncd serve --auth-tokens` accepts as a secret). The reason, when it
/// cannot, never quotes the token.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("it is empty".into());
    }
    if token.len() > TOKEN_BYTES_MAX {
        return Err(format!(
            "it is {} bytes long, more than {TOKEN_BYTES_MAX}",
            token.len()
        ));
    }
    if let Some((at, c)) = token.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        let what = match c {
            ' ' => "a space".to_string(),
            '\t' => "a tab".to_string(),
            '\n' | '\r' => "a line break".to_string(),
            c if c.is_ascii_control() => format!("a control character ({:#04x})", c as u32),
            _ => "a character that is not ASCII".to_string(),
        };
        return Err(format!(
            "it has {what} at byte {at} (a token is printable ASCII without spaces)"
        ));
    }
    Ok(())
}

/// The connection wrapped so that every request carries `bearer`'s token.
pub(crate) fn transport(channel: Channel, bearer: Bearer) -> Transport {
    InterceptedService::new(channel, bearer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_added_to_every_request() {
        let mut bearer = Bearer::new(Some("s3cret-Token_1")).unwrap();
        assert!(bearer.has_token());
        let request = bearer.call(Request::new(())).unwrap();
        let value = request.metadata().get(AUTHORIZATION).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret-Token_1");
        assert!(value.is_sensitive());
        // A header already there is replaced, not doubled.
        let again = bearer.call(request).unwrap();
        assert_eq!(again.metadata().get_all(AUTHORIZATION).iter().count(), 1);
    }

    #[test]
    fn without_a_token_nothing_is_added() {
        let mut bearer = Bearer::new(None).unwrap();
        assert!(!bearer.has_token());
        let request = bearer.call(Request::new(())).unwrap();
        assert!(request.metadata().get(AUTHORIZATION).is_none());
        assert!(!Bearer::default().has_token());
    }

    #[test]
    fn the_secret_is_never_shown() {
        let bearer = Bearer::new(Some("hunter2hunter2")).unwrap();
        let shown = format!("{bearer:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Bearer(Some(<secret>))");
        assert_eq!(format!("{:?}", Bearer::new(None).unwrap()), "Bearer(None)");
    }

    #[test]
    fn tokens_that_cannot_be_sent_are_refused() {
        assert!(check_token("abc").is_ok());
        assert!(check_token("!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~").is_ok());
        assert_eq!(check_token(""), Err("it is empty".into()));
        let space = check_token("top secret").unwrap_err();
        assert_eq!(
            space,
            "it has a space at byte 3 (a token is printable ASCII without spaces)"
        );
        assert!(check_token("line\n").unwrap_err().contains("a line break"));
        assert!(check_token("tab\there").unwrap_err().contains("a tab"));
        assert!(check_token("nul\0").unwrap_err().contains("0x00"));
        assert!(check_token("grüße").unwrap_err().contains("not ASCII"));
        let long = "x".repeat(TOKEN_BYTES_MAX + 1);
        assert!(check_token(&long).unwrap_err().contains("more than 4096"));
        assert!(check_token(&long[1..]).is_ok());

        let error = Bearer::new(Some("top secret")).unwrap_err();
        assert!(matches!(error, Error::InvalidAddress(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.starts_with("the token cannot be used: it has a space"));
        assert!(!message.contains("top secret"), "{message}");
    }
}
