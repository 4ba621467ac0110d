//! What one probe found, for the backends' probes to return.

/// A finding's text: `safe` holds no path and no SQLite message.
#[derive(Debug, Clone)]
pub struct Detail {
    pub(crate) safe: String,
    pub(crate) full: String,
}

impl Detail {
    /// A text that is safe as it is.
    pub(crate) fn same(text: impl Into<String>) -> Self {
        let text = text.into();
        Detail {
            safe: text.clone(),
            full: text,
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone)]
pub enum Finding {
    Pass,
    /// A lock, an exhausted pool, a timeout: `warn`.
    Transient(Detail),
    /// A dead or unreadable database: `fail`.
    Dead(Detail),
}
