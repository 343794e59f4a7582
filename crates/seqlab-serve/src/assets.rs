//! The web page, compiled into the binary (no build step, no CDN): plain HTML, CSS and
//! JavaScript that call the JSON API.

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
