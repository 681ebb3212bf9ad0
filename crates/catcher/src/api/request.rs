//! Typed request bodies with bounded size.
//!
//! Bodies used to become `serde_json::Value` trees: one 60 MB
//! `PUT /api/v1/tags` with 2.4 M IDs raised the server's peak RSS from 24 to
//! 352 MiB (main 89dad44). Now every body is read under a limit (1 MiB but
//! for the send API) and decoded straight into these structs, whose lists
//! stop at a fixed length while parsing, so no request can build more than a
//! small multiple of its (limited) size in memory.
//!
//! Field names match case-insensitively and unknown fields are ignored, as
//! with Go's `encoding/json`, which Mailpit's clients were written against.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON array of at most `MAX` items; a longer one is an error raised as
/// soon as item `MAX + 1` is seen.
#[derive(Debug)]
pub(crate) struct List<T, const MAX: usize>(pub Vec<T>);

impl<T, const MAX: usize> Default for List<T, MAX> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for List<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for V<T, MAX> {
            type Value = List<T, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of at most {MAX} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX {
                        return Err(de::Error::custom(format!(
                            "too many items (the limit is {MAX})"
                        )));
                    }
                    items.push(item);
                }
                Ok(List(items))
            }
        }
        d.deserialize_seq(V::<T, MAX>(PhantomData))
    }
}

/// A JSON object of string values with at most `MAX` entries, in order.
#[derive(Debug, Default)]
pub(crate) struct StringMap<const MAX: usize>(pub Vec<(String, String)>);

impl<'de, const MAX: usize> Deserialize<'de> for StringMap<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MAX: usize>;
        impl<'de, const MAX: usize> Visitor<'de> for V<MAX> {
            type Value = StringMap<MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an object of at most {MAX} string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if entries.len() == MAX {
                        return Err(de::Error::custom(format!(
                            "too many entries (the limit is {MAX})"
                        )));
                    }
                    let v: String = map
                        .next_value()
                        .map_err(|_| de::Error::custom(format!("\"{k}\" must be a string")))?;
                    entries.push((k, v));
                }
                Ok(StringMap(entries))
            }
        }
        d.deserialize_map(V::<MAX>)
    }
}

/// Declares a request struct whose `Deserialize` matches JSON keys
/// case-insensitively (first listed name wins), ignores unknown keys and
/// leaves absent or `null` fields at their default.
macro_rules! request_struct {
    ($(#[$m:meta])* pub(crate) struct $name:ident {
        $($(#[$fm:meta])* $field:ident : $ty:ty = $key:literal),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub(crate) struct $name {
            $($(#[$fm])* pub $field: $ty),*
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a JSON object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$name, A::Error> {
                        let mut out = $name::default();
                        while let Some(key) = map.next_key::<String>()? {
                            $(if key.eq_ignore_ascii_case($key) {
                                let v: Option<$ty> = map.next_value().map_err(|e| {
                                    serde::de::Error::custom(format!("{}: {e}", $key))
                                })?;
                                if let Some(v) = v {
                                    out.$field = v;
                                }
                                continue;
                            })*
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

/// Most message IDs one request may name (about 40 000 fit in the 1 MiB
/// body limit).
pub(crate) const MAX_IDS: usize = 50_000;
/// Most tags one request may set.
pub(crate) const MAX_TAGS: usize = 1_000;

request_struct! {
    /// `PUT /api/v1/messages`.
    pub(crate) struct SetRead {
        ids: List<String, MAX_IDS> = "IDs",
        read: bool = "Read",
        search: String = "Search",
    }
}

request_struct! {
    /// `DELETE /api/v1/messages`.
    pub(crate) struct Delete {
        ids: List<String, MAX_IDS> = "IDs",
    }
}

request_struct! {
    /// `PUT /api/v1/tags`.
    pub(crate) struct SetTags {
        ids: List<String, MAX_IDS> = "IDs",
        tags: List<String, MAX_TAGS> = "Tags",
    }
}

request_struct! {
    /// `PUT /api/v1/tags/{tag}`.
    pub(crate) struct RenameTag {
        name: String = "Name",
    }
}

/// Most recipients in each of To, Cc, Bcc and ReplyTo of a send request.
pub(crate) const MAX_SEND_ADDRESSES: usize = 1_000;
/// Most attachments (inline ones included) of a send request.
pub(crate) const MAX_SEND_ATTACHMENTS: usize = 1_000;
/// Most extra headers of a send request.
pub(crate) const MAX_SEND_HEADERS: usize = 1_000;

request_struct! {
    /// A name and address of the send API.
    pub(crate) struct SendAddress {
        email: String = "Email",
        name: String = "Name",
    }
}

request_struct! {
    /// An attachment of the send API (inline when it has a content ID).
    pub(crate) struct SendAttachment {
        content: String = "Content",
        filename: String = "Filename",
        content_type: String = "ContentType",
        content_id: String = "ContentID",
    }
}

request_struct! {
    /// `POST /api/v1/send`, as Mailpit's `SendRequest`.
    pub(crate) struct SendRequest {
        from: Option<SendAddress> = "From",
        to: List<SendAddress, MAX_SEND_ADDRESSES> = "To",
        cc: List<SendAddress, MAX_SEND_ADDRESSES> = "Cc",
        bcc: List<String, MAX_SEND_ADDRESSES> = "Bcc",
        reply_to: List<SendAddress, MAX_SEND_ADDRESSES> = "ReplyTo",
        subject: String = "Subject",
        text: String = "Text",
        html: String = "HTML",
        attachments: List<SendAttachment, MAX_SEND_ATTACHMENTS> = "Attachments",
        headers: StringMap<MAX_SEND_HEADERS> = "Headers",
        tags: List<String, MAX_TAGS> = "Tags",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_case_insensitively_and_nulls_are_defaults() {
        let r: SetRead =
            serde_json::from_str(r#"{"ids":["a","b"],"READ":true,"Search":null,"x":[1]}"#).unwrap();
        assert_eq!(r.ids.0, vec!["a", "b"]);
        assert!(r.read);
        assert!(r.search.is_empty());
    }

    #[test]
    fn lists_stop_at_their_limit() {
        let ok = format!("[{}]", ["\"x\""; 3].join(","));
        assert_eq!(
            serde_json::from_str::<List<String, 3>>(&ok)
                .unwrap()
                .0
                .len(),
            3
        );
        let long = format!("[{}]", ["\"x\""; 4].join(","));
        let e = serde_json::from_str::<List<String, 3>>(&long).unwrap_err();
        assert!(e.to_string().contains("limit is 3"), "{e}");
        let e = serde_json::from_str::<SetTags>(r#"{"IDs": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("IDs"), "{e}");
    }
}
