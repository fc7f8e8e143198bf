//! The gRPC codec of every saga API: prost encoding, and a decoder that
//! answers a request it cannot decode with `INVALID_ARGUMENT` naming the
//! field at fault (`items[0].sku: not valid UTF-8`) instead of prost's
//! `INTERNAL: failed to decode Protobuf message`. Bad bytes are the
//! caller's mistake, like any other bad input.
//!
//! When decoding fails, the raw bytes are walked again with the message's
//! descriptor (the same descriptor set reflection serves) to find the first
//! string field that is not UTF-8, with the index of each repeated field on
//! the way.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use bytes::Buf;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// [`tonic_prost::ProstCodec`] with field-named decode errors.
#[derive(Debug, Clone)]
pub struct SagaCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SagaCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for SagaCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SagaDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SagaDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; see the module documentation.
#[derive(Debug, Clone)]
pub struct SagaDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + prost::Name + Default> Decoder for SagaDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        match U::decode(bytes.clone()) {
            Ok(item) => Ok(Some(item)),
            Err(e) => Err(decode_error(&U::full_name(), &bytes, &e)),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status for bytes that do not decode as `message`.
pub fn decode_error(message: &str, bytes: &[u8], error: &prost::DecodeError) -> Status {
    match first_bad_string(message, bytes) {
        Some(path) => Status::invalid_argument(format!("{path}: not valid UTF-8")),
        None => Status::invalid_argument(format!("the request is not a valid {message}: {error}")),
    }
}

/// Messages by full name (`saga.order.v1.PlaceOrderRequest`).
fn messages() -> &'static HashMap<String, DescriptorProto> {
    static MESSAGES: OnceLock<HashMap<String, DescriptorProto>> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        let mut out = HashMap::new();
        let Ok(set) = FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) else {
            return out;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for m in file.message_type {
                collect(&package, m, &mut out);
            }
        }
        out
    })
}

fn collect(prefix: &str, m: DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{prefix}.{}", m.name());
    for nested in &m.nested_type {
        collect(&name, nested.clone(), out);
    }
    out.insert(name, m);
}

/// The path of the first string field of `message` in `bytes` that is not
/// UTF-8 (`items[0].sku`), if the bytes are otherwise well formed.
pub fn first_bad_string(message: &str, bytes: &[u8]) -> Option<String> {
    walk(messages(), message, bytes, "", 0)
}

fn walk(
    all: &HashMap<String, DescriptorProto>,
    message: &str,
    mut bytes: &[u8],
    prefix: &str,
    depth: usize,
) -> Option<String> {
    if depth > 32 {
        return None;
    }
    let descriptor = all.get(message)?;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    while !bytes.is_empty() {
        let key = prost::encoding::decode_varint(&mut bytes).ok()?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut bytes).ok()?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if bytes.len() < n {
                    return None;
                }
                bytes.advance(n);
            }
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut bytes).ok()?).ok()?;
                if bytes.len() < len {
                    return None;
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                let Some(field) = descriptor
                    .field
                    .iter()
                    .find(|f| u64::try_from(f.number()).ok() == Some(number))
                else {
                    continue;
                };
                let index = seen.entry(number).or_default();
                let name = if field.label() == Label::Repeated {
                    format!("{prefix}{}[{index}]", field.name())
                } else {
                    format!("{prefix}{}", field.name())
                };
                *index += 1;
                match field.r#type() {
                    Type::String if std::str::from_utf8(value).is_err() => return Some(name),
                    Type::Message => {
                        let nested = field.type_name().trim_start_matches('.');
                        if let Some(path) = walk(all, nested, value, &format!("{name}."), depth + 1)
                        {
                            return Some(path);
                        }
                    }
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::proto::order::v1::{LineItem, PlaceOrderRequest};

    /// Encodes `request` with every "XX" marker in its strings replaced by
    /// two bytes that are not UTF-8.
    fn with_bad_bytes(request: &PlaceOrderRequest) -> Vec<u8> {
        let mut bytes = request.encode_to_vec();
        for i in 0..bytes.len().saturating_sub(1) {
            if &bytes[i..i + 2] == b"XX" {
                bytes[i] = 0xff;
                bytes[i + 1] = 0xfe;
            }
        }
        bytes
    }

    #[test]
    fn the_first_field_that_is_not_utf8_is_named_with_its_index() {
        let request = PlaceOrderRequest {
            customer_id: "c1".into(),
            items: vec![
                LineItem {
                    sku: "A".into(),
                    quantity: 1,
                },
                LineItem {
                    sku: "bXX".into(),
                    quantity: 2,
                },
            ],
            slot_id: None,
        };
        let bytes = with_bad_bytes(&request);
        assert!(PlaceOrderRequest::decode(bytes.as_slice()).is_err());
        assert_eq!(
            super::first_bad_string("saga.order.v1.PlaceOrderRequest", &bytes).as_deref(),
            Some("items[1].sku")
        );
        let top = PlaceOrderRequest {
            customer_id: "XX".into(),
            ..request
        };
        assert_eq!(
            super::first_bad_string("saga.order.v1.PlaceOrderRequest", &with_bad_bytes(&top))
                .as_deref(),
            Some("customer_id")
        );
    }

    #[test]
    fn malformed_bytes_are_an_invalid_argument_without_a_field() {
        let bytes = [0x0a, 0x10, b'a'];
        let err = PlaceOrderRequest::decode(&bytes[..]).unwrap_err();
        let status = super::decode_error("saga.order.v1.PlaceOrderRequest", &bytes, &err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("PlaceOrderRequest"), "{status:?}");
    }
}
