//! For the tests: a small well-formedness check of the pages and pictures. Every tag closes
//! in order (HTML's void elements aside), attribute values are quoted, and every `&` starts an
//! entity, so that a stray unescaped character fails the test.

/// HTML elements that have no end tag.
const VOID: [&str; 7] = ["meta", "input", "br", "hr", "link", "img", "wbr"];

/// Panics with the reason when `markup` is not well formed; returns the element names in
/// document order.
pub(crate) fn assert_well_formed(markup: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = markup;
    if let Some(after) = rest.strip_prefix("<!DOCTYPE html>") {
        rest = after;
    }
    while let Some(start) = rest.find('<') {
        check_text(&rest[..start]);
        let tag_end = rest[start..]
            .find('>')
            .map(|end| start + end)
            .unwrap_or_else(|| panic!("unclosed tag at {}", &rest[start..]));
        let tag = &rest[start + 1..tag_end];
        rest = &rest[tag_end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let expected = open.pop();
            assert_eq!(expected.as_deref(), Some(name), "closing </{name}>");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "bad element name in <{tag}>"
        );
        check_attributes(&body[name_end..], tag);
        seen.push(name.to_owned());
        if self_closing || VOID.contains(&name) {
            continue;
        }
        if name == "style" {
            let end = rest.find("</style>").expect("style closes");
            assert!(!rest[..end].contains('<'), "markup in a style sheet");
            rest = &rest[end + "</style>".len()..];
            continue;
        }
        open.push(name.to_owned());
    }
    check_text(rest);
    assert!(open.is_empty(), "unclosed elements: {open:?}");
    seen
}

/// Attributes: `name="value"` pairs with escaped values.
fn check_attributes(mut attributes: &str, tag: &str) {
    loop {
        attributes = attributes.trim_start();
        if attributes.is_empty() {
            return;
        }
        let name_end = attributes
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(attributes.len());
        let name = &attributes[..name_end];
        if !attributes[name_end..].starts_with('=') {
            // A boolean attribute of HTML: `selected`.
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase()),
                "bad attribute {name:?} in <{tag}>"
            );
            attributes = &attributes[name_end..];
            continue;
        }
        let equals = name_end;
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':')),
            "bad attribute name {name:?} in <{tag}>"
        );
        let value = attributes[equals + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted attribute in <{tag}>"));
        let end = value.find('"').expect("attribute value closes");
        check_text(&value[..end]);
        assert!(
            !value[..end].contains('<'),
            "`<` in an attribute of <{tag}>"
        );
        attributes = &value[end + 1..];
    }
}

/// Text: no `>` and every `&` an entity.
fn check_text(text: &str) {
    assert!(!text.contains('>'), "unescaped `>` in {text:?}");
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        rest = &rest[at + 1..];
        let end = rest.find(';').expect("entity closes");
        let entity = &rest[..end];
        assert!(
            matches!(entity, "amp" | "lt" | "gt" | "quot" | "#39"),
            "unknown entity &{entity};"
        );
    }
}
