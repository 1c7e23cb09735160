//! The login form: an admin key exchanged for a session cookie by the gateway.

use crate::layout::{Nav, escape, page};

#[derive(Debug, Clone)]
pub struct LoginPage<'a> {
    /// Where the form posts (the gateway's login route).
    pub action: &'a str,
    /// The anti-CSRF token the gateway checks on the POST, sent back in a hidden field.
    pub csrf_token: &'a str,
    /// Name of that hidden field.
    pub csrf_field: &'a str,
    /// Shown above the form after a failed attempt ("That key is not an admin key.").
    pub error: Option<&'a str>,
}

pub fn login(input: &LoginPage<'_>) -> String {
    let error = input
        .error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<form class=\"login\" method=\"post\" action=\"{}\" autocomplete=\"off\">\
         <h1>Admin sign-in</h1>{error}\
         <input type=\"hidden\" name=\"{}\" value=\"{}\">\
         <label for=\"key\">Admin API key</label>\
         <input id=\"key\" name=\"key\" type=\"password\" required autocomplete=\"current-password\" \
         spellcheck=\"false\" autocapitalize=\"off\">\
         <button type=\"submit\">Sign in</button></form>",
        escape(input.action),
        escape(input.csrf_field),
        escape(input.csrf_token)
    );
    page("Sign in", Nav::None, &body)
}
