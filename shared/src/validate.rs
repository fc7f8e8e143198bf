//! Field-named validation errors for requests.
//!
//! A request is checked field by field before anything is stored; the first
//! problem found becomes `INVALID_ARGUMENT` (or `NOT_FOUND` for an unknown id)
//! with the field's path in the message, e.g. `items[2].quantity: must be at
//! least 1, got 0`.

use std::fmt;

use uuid::Uuid;

/// A problem with one field of a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl fmt::Display, message: impl fmt::Display) -> Self {
        Self {
            field: field.to_string(),
            message: message.to_string(),
        }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Parses a UUID field; empty and malformed values name the field.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if value.len() > 36 {
        return Err(FieldError::new(
            field,
            format!("must be a UUID, got {} characters", value.len()),
        ));
    }
    Uuid::parse_str(value)
        .map_err(|_| FieldError::new(field, format!("must be a UUID, got {value:?}")))
}

/// An identifier chosen by clients (SKU, customer id): 1..=`max` characters of
/// `[A-Za-z0-9._:-]`. These end up in Redis keys and logs, so nothing else.
pub fn ident(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters, got {}", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(FieldError::new(
            field,
            format!("may only contain letters, digits and . _ : - (found {c:?})"),
        ));
    }
    Ok(())
}

/// Free text (names): 1..=`max` characters, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    let len = value.chars().count();
    if len > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters, got {len}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An integer in `min..=max`.
pub fn range(field: &str, value: i64, min: i64, max: i64) -> Result<(), FieldError> {
    if value < min {
        return Err(FieldError::new(
            field,
            format!("must be at least {min}, got {value}"),
        ));
    }
    if value > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

/// A page size: 0 means `default`, else 1..=`max`.
pub fn page_size(field: &str, value: i32, default: i64, max: i64) -> Result<i64, FieldError> {
    if value == 0 {
        return Ok(default);
    }
    range(field, i64::from(value), 1, max)?;
    Ok(i64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_name_the_field_and_the_problem() {
        assert!(ident("sku", "ABC-1.2_x:y", 64).is_ok());
        let e = ident("items[0].sku", "", 64).unwrap_err();
        assert_eq!(e.to_string(), "items[0].sku: is required");
        let e = ident("sku", &"a".repeat(65), 64).unwrap_err();
        assert!(e.to_string().contains("at most 64"));
        let e = ident("sku", "a b", 64).unwrap_err();
        assert!(e.to_string().contains("' '"));
    }

    #[test]
    fn uuids_are_checked() {
        assert!(uuid("order_id", &Uuid::now_v7().to_string()).is_ok());
        assert_eq!(uuid("order_id", "").unwrap_err().field, "order_id");
        assert!(
            uuid("order_id", "nope")
                .unwrap_err()
                .message
                .contains("UUID")
        );
        assert!(
            uuid("order_id", &"f".repeat(1000))
                .unwrap_err()
                .message
                .contains("1000")
        );
    }

    #[test]
    fn ranges_and_pages() {
        assert!(range("q", 0, 1, 10).is_err());
        assert!(range("q", 11, 1, 10).is_err());
        assert!(range("q", 5, 1, 10).is_ok());
        assert_eq!(page_size("page_size", 0, 50, 500).unwrap(), 50);
        assert!(page_size("page_size", -1, 50, 500).is_err());
        assert!(page_size("page_size", 501, 50, 500).is_err());
    }

    #[test]
    fn text_rejects_control_characters_and_blank() {
        assert!(text("name", "Widget", 10).is_ok());
        assert!(text("name", "  ", 10).is_err());
        assert!(text("name", "a\u{0}b", 10).is_err());
        assert!(text("name", "ééééé", 5).is_ok());
    }
}
