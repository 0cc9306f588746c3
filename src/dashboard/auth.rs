//! Who may use the dashboard: sign-in with a token, the session cookie, sign-out, the checks
//! that guard every other path, and the refusal of cross-site state-changing requests.
//!
//! A token is checked by the stream's own validator; only a subscriber in
//! [`DashboardConfig::admins`](super::DashboardConfig) gets a session. Pages without a valid
//! session redirect to the sign-in page; fragments and the stream answer `401`.

use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Query, Request, State};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use http::{header, HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::StreamConfig;
use crate::request::MAX_TOKEN_LEN;

use super::error::DashboardError;
use super::pages::Layout;
use super::{sessions, Dashboard, DashboardConfig};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "kavach_dashboard_session";

/// The signed-in admin, put in a request's extensions by the session checks.
#[derive(Debug, Clone)]
pub(crate) struct Admin(pub String);

#[derive(Template)]
#[template(path = "dashboard/signin.html")]
struct SigninPage {
    layout: Layout,
    problem: Option<String>,
    enabled: bool,
    next: String,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SigninForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// Why a sign-in was refused.
#[derive(Debug)]
enum Refusal {
    /// The stream has no validator (it runs with `require_auth = false`).
    NoValidator,
    NoAdmins,
    EmptyToken,
    InvalidToken,
    NotAdmin(String),
    ValidatorFailed,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::EmptyToken => StatusCode::BAD_REQUEST,
            Refusal::InvalidToken => StatusCode::UNAUTHORIZED,
            Refusal::ValidatorFailed => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NoValidator | Refusal::NoAdmins | Refusal::NotAdmin(_) => {
                StatusCode::FORBIDDEN
            }
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::NoValidator => "The dashboard is disabled: this stream runs without a token \
                validator (require_auth = false), so it cannot tell who is an admin. Configure a \
                validator to use the dashboard."
                .to_owned(),
            Refusal::NoAdmins => "The dashboard is disabled: no admin is configured. Add \
                subscriber ids to the dashboard's admins."
                .to_owned(),
            Refusal::EmptyToken => "Enter your access token.".to_owned(),
            Refusal::InvalidToken => "That token is not valid.".to_owned(),
            Refusal::NotAdmin(subscriber) => format!(
                "The token is valid, but subscriber \u{201c}{subscriber}\u{201d} is not a \
                 dashboard admin. Ask an operator to add it to the dashboard's admins."
            ),
            Refusal::ValidatorFailed => "The token could not be checked right now; try again \
                in a moment."
                .to_owned(),
        }
    }
}

/// `GET /admin/signin`: the sign-in form, or why the dashboard is disabled.
pub(crate) async fn show_signin(
    State(dashboard): State<Dashboard>,
    Query(query): Query<NextQuery>,
) -> Result<Response, DashboardError> {
    let next = safe_next(query.next.as_deref());
    let problem = dashboard.disabled_reason();
    let page = signin_page(problem.as_ref(), next)?;
    Ok(page.into_response())
}

/// `POST /admin/signin`: checks the token and, for an admin, starts a session.
pub(crate) async fn sign_in(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<SigninForm>,
) -> Result<Response, DashboardError> {
    check_same_origin(&headers, &uri)?;
    let next = safe_next(form.next.as_deref());

    let subscriber = match dashboard.admit(form.token).await {
        Ok(subscriber) => subscriber,
        Err(refusal) => {
            info!(reason = ?refusal, "dashboard sign-in refused");
            let page = signin_page(Some(&refusal), next)?;
            return Ok((refusal.status(), page).into_response());
        }
    };

    let config = &dashboard.config;
    let session =
        sessions::create(dashboard.stream.pool(), &subscriber, config.session_ttl).await?;
    info!(subscriber = %subscriber, "dashboard sign-in");
    let cookie = session_cookie(session, config);
    Ok(see_other(&next, Some(cookie)))
}

/// `POST /admin/signout`: ends the session and clears the cookie.
pub(crate) async fn sign_out(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, DashboardError> {
    check_same_origin(&headers, &uri)?;

    if let Some(session) = session_id(&headers) {
        sessions::delete(dashboard.stream.pool(), session).await?;
    }
    Ok(see_other(
        "/admin/signin",
        Some(clearing_cookie(&dashboard.config)),
    ))
}

/// Guards pages: without a session, redirects to sign-in (and back here afterwards).
pub(crate) async fn require_page_session(
    State(dashboard): State<Dashboard>,
    mut request: Request,
    next: Next,
) -> Response {
    match dashboard.admin_of(request.headers()).await {
        Ok(Some(admin)) => {
            request.extensions_mut().insert(admin);
            next.run(request).await
        }
        Ok(None) => {
            let back = request
                .uri()
                .path_and_query()
                .map_or("/admin", |path| path.as_str());
            let target = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", back)
                .finish();
            see_other(&format!("/admin/signin?{target}"), None)
        }
        Err(error) => error.into_response(),
    }
}

/// Guards fragments and the stream: without a session, `401`.
pub(crate) async fn require_fragment_session(
    State(dashboard): State<Dashboard>,
    mut request: Request,
    next: Next,
) -> Response {
    match dashboard.admin_of(request.headers()).await {
        Ok(Some(admin)) => {
            request.extensions_mut().insert(admin);
            next.run(request).await
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Sign in to the dashboard first: /admin/signin",
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

impl Dashboard {
    /// Why nobody can sign in, if that is the case.
    fn disabled_reason(&self) -> Option<Refusal> {
        if self.stream.config().validator.is_none() {
            return Some(Refusal::NoValidator);
        }
        self.config.admins.is_empty().then_some(Refusal::NoAdmins)
    }

    /// The admin a token belongs to, or why it gets no session.
    async fn admit(&self, token: String) -> Result<String, Refusal> {
        if let Some(reason) = self.disabled_reason() {
            return Err(reason);
        }
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(Refusal::EmptyToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::InvalidToken);
        }

        let subscriber = validate(self.stream.config(), token)
            .await?
            .ok_or(Refusal::InvalidToken)?;
        match self.config.admins.contains(&subscriber) {
            true => Ok(subscriber),
            false => Err(Refusal::NotAdmin(subscriber)),
        }
    }

    /// The admin of the request's session cookie, if it names a live session of a current admin.
    async fn admin_of(&self, headers: &HeaderMap) -> Result<Option<Admin>, DashboardError> {
        let Some(session) = session_id(headers) else {
            return Ok(None);
        };
        let subscriber = sessions::subscriber_of(self.stream.pool(), session).await?;
        // Removing someone from `admins` ends their sessions at the next restart.
        Ok(subscriber
            .filter(|subscriber| self.config.admins.contains(subscriber))
            .map(Admin))
    }
}

/// Runs the stream's validator on its own task under the stream's timeout, as connections do.
async fn validate(config: &StreamConfig, token: String) -> Result<Option<String>, Refusal> {
    let validator = config.validator.clone().ok_or(Refusal::NoValidator)?;
    let validation = tokio::spawn(async move { validator.validate(token).await });

    match tokio::time::timeout(config.validator_timeout, validation).await {
        Ok(Ok(Ok(subscriber))) => Ok(subscriber),
        Ok(Ok(Err(error))) => {
            warn!(error = %error, "token validator failed during dashboard sign-in");
            Err(Refusal::ValidatorFailed)
        }
        Ok(Err(join_error)) => {
            warn!(error = %join_error, "token validator panicked during dashboard sign-in");
            Err(Refusal::ValidatorFailed)
        }
        Err(_) => {
            warn!("token validator timed out during dashboard sign-in");
            Err(Refusal::ValidatorFailed)
        }
    }
}

fn signin_page(problem: Option<&Refusal>, next: String) -> Result<Html<String>, DashboardError> {
    let enabled = !matches!(problem, Some(Refusal::NoValidator | Refusal::NoAdmins));
    let page = SigninPage {
        layout: Layout::signed_out("Sign in"),
        problem: problem.map(Refusal::message),
        enabled,
        next,
    };
    Ok(Html(page.render()?))
}

/// Refuses a state-changing request that a browser marks as coming from another site.
///
/// `Sec-Fetch-Site` decides when present (every current browser sends it); otherwise `Origin`
/// must name this host. A request with neither comes from no browser and carries no ambient
/// credentials a foreign page could abuse, so it passes.
pub(crate) fn check_same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), DashboardError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" => Ok(()),
            _ => Err(DashboardError::CrossSite),
        };
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };

    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, authority)| authority);
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    match (origin_host, host) {
        (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(DashboardError::CrossSite),
    }
}

/// The session id in the request's cookie, if it is well formed.
fn session_id(headers: &HeaderMap) -> Option<Uuid> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| Uuid::try_parse(value).ok())
}

fn session_cookie(session: Uuid, config: &DashboardConfig) -> String {
    cookie(&session.simple().to_string(), config.session_ttl, config)
}

fn clearing_cookie(config: &DashboardConfig) -> String {
    cookie("", Duration::ZERO, config)
}

fn cookie(value: &str, max_age: Duration, config: &DashboardConfig) -> String {
    let secure = if config.secure_cookie { "; Secure" } else { "" };
    format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

/// Where to go after signing in: a dashboard page, never another site or the sign-in itself.
fn safe_next(next: Option<&str>) -> String {
    let next = next.unwrap_or("/admin");
    let rest = next.strip_prefix("/admin").unwrap_or("//");
    let inside_admin = rest.is_empty() || rest.starts_with('/') || rest.starts_with('?');
    let harmless = !next.contains(['\\', '\r', '\n']) && !rest.starts_with("//");
    let loops = rest.starts_with("/signin") || rest.starts_with("/signout");
    match inside_admin && harmless && !loops {
        true => next.to_owned(),
        false => "/admin".to_owned(),
    }
}

/// A `303 See Other` to `location`, optionally setting a cookie.
fn see_other(location: &str, cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(cookie) = cookie.and_then(|cookie| cookie.parse().ok()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn next_stays_inside_the_dashboard() {
        assert_eq!(
            safe_next(Some("/admin/history?types=audit")),
            "/admin/history?types=audit"
        );
        assert_eq!(safe_next(Some("/admin")), "/admin");
        for hostile in [
            "https://evil.example/admin",
            "//evil.example",
            "/admin//evil.example",
            "/administrator",
            "/admin/signin",
            "/admin\\..",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/admin", "{hostile}");
        }
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let uri = Uri::from_static("/admin/signin");

        let same = headers(&[("sec-fetch-site", "same-origin"), ("host", "a:1")]);
        let cross = headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://a:1")]);
        let same_site = headers(&[("sec-fetch-site", "same-site")]);
        let foreign_origin = headers(&[("origin", "http://evil.example"), ("host", "a:1")]);
        let own_origin = headers(&[("origin", "https://a:1"), ("host", "a:1")]);
        let null_origin = headers(&[("origin", "null"), ("host", "a:1")]);

        assert!(check_same_origin(&same, &uri).is_ok());
        assert!(check_same_origin(&cross, &uri).is_err());
        assert!(check_same_origin(&same_site, &uri).is_err());
        assert!(check_same_origin(&foreign_origin, &uri).is_err());
        assert!(check_same_origin(&own_origin, &uri).is_ok());
        assert!(check_same_origin(&null_origin, &uri).is_err());
        assert!(check_same_origin(&HeaderMap::new(), &uri).is_ok());
    }

    #[test]
    fn the_session_id_is_read_from_among_other_cookies() {
        let id = Uuid::new_v4();
        let mut with_cookie = HeaderMap::new();
        let value = format!("theme=dark; {COOKIE}={}; x=y", id.simple());
        with_cookie.insert(header::COOKIE, value.parse().unwrap());

        assert_eq!(session_id(&with_cookie), Some(id));
        assert_eq!(
            session_id(&headers(&[("cookie", "kavach_dashboard_session=nope")])),
            None
        );
    }
}
