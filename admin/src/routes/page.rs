//! Cursor pagination shared by every list: `?limit=&cursor=` in, `{items, nextCursor}` out.
//! The cursor is the last item's id; a list asks the store for one item more than the page to
//! know whether another page exists, so `nextCursor` is `null` exactly on the last page.

use serde::Serialize;

use crate::error::ApiError;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest `limit` accepted.
pub const MAX_LIMIT: u32 = 200;

/// A page of a list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// No items, no next page.
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            next_cursor: None,
        }
    }
}

/// Checks `limit` (default [`DEFAULT_LIMIT`], 1..=[`MAX_LIMIT`]).
pub fn limit(raw: Option<u32>) -> Result<u32, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::InvalidQuery {
            field: "limit".into(),
            message: format!("must be between 1 and {MAX_LIMIT}"),
        }),
    }
}

/// Longest text filter accepted (`name`, `targetId`).
pub const MAX_FILTER_LEN: usize = 64;

/// Checks a text filter's length.
pub fn filter(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > MAX_FILTER_LEN => Err(ApiError::InvalidQuery {
            field: field.into(),
            message: format!("at most {MAX_FILTER_LEN} characters"),
        }),
        other => Ok(other),
    }
}

/// Builds a page from `fetched` (up to `limit + 1` items): the extra item only says that there
/// is more, and the cursor is the id of the page's last item.
pub fn page<R, T>(
    mut fetched: Vec<R>,
    limit: u32,
    cursor_of: impl Fn(&R) -> String,
    view: impl Fn(R) -> T,
) -> Page<T> {
    let limit = limit as usize;
    let more = fetched.len() > limit;
    fetched.truncate(limit);
    let next_cursor = if more {
        fetched.last().map(&cursor_of)
    } else {
        None
    };
    Page {
        items: fetched.into_iter().map(view).collect(),
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_cursor_only_when_more() {
        let p = page(vec![1, 2, 3], 2, |i| i.to_string(), |i| i);
        assert_eq!(p.items, [1, 2]);
        assert_eq!(p.next_cursor.as_deref(), Some("2"));
        let p = page(vec![1, 2], 2, |i| i.to_string(), |i| i);
        assert_eq!(p.next_cursor, None);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
    }
}
