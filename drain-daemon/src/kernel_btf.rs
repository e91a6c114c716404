//! Where the fields of a kernel struct are, from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The in-band close reads four sequence numbers of the server's `struct tcp_sock`
//! ([`drain_common::boundary`]). That struct's layout changes between kernels and aya's
//! bindings treat it as opaque, so the loader looks the offsets up here and hands them to
//! the program as constants; the verifier then checks each read against the same BTF.
//! aya parses BTF too but does not expose struct members, so this is a small reader of
//! the format (Documentation/bpf/btf.rst): the header, the type section (walked once,
//! each kind's trailing data skipped by its documented size) and the string section.

use std::{fs, io, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why an offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path} (needs CONFIG_DEBUG_INFO_BTF): {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} in the kernel's BTF has no 4-byte field {field}")]
    NoField { strukt: String, field: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// The byte offsets of `fields` (each a 4-byte integer, not a bit field) in `struct
/// strukt` of the running kernel.
pub fn field_offsets<const N: usize>(
    strukt: &str,
    fields: [&str; N],
) -> Result<[u32; N], BtfError> {
    let path = Path::new(VMLINUX_BTF);
    let data = fs::read(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Btf::parse(&data)?.field_offsets(strukt, fields)
}

/// One type of the type section: its kind, `size_or_type` word and trailing data.
#[derive(Clone, Copy)]
struct Type<'a> {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    size_or_type: u32,
    extra: &'a [u8],
}

/// A parsed BTF blob: its types (id 1 first) and strings.
struct Btf<'a> {
    types: Vec<Type<'a>>,
    strings: &'a [u8],
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let word = |at: usize| -> Result<u32, BtfError> {
            let bytes = data
                .get(at..at + 4)
                .ok_or(BtfError::Malformed("header truncated"))?;
            Ok(u32::from_ne_bytes(bytes.try_into().unwrap_or_default()))
        };
        if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed(
                "no BTF magic (or not in host byte order)",
            ));
        }
        let header_len = word(4)? as usize;
        let section = |offset: u32, len: u32| -> Result<&'a [u8], BtfError> {
            let start = header_len
                .checked_add(offset as usize)
                .ok_or(BtfError::Malformed("section offset"))?;
            data.get(start..start.saturating_add(len as usize))
                .filter(|s| s.len() == len as usize)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_section = section(word(8)?, word(12)?)?;
        let strings = section(word(16)?, word(20)?)?;
        Ok(Self {
            types: parse_types(type_section)?,
            strings,
        })
    }

    fn name(&self, offset: u32) -> &'a [u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn by_id(&self, id: u32) -> Option<&Type<'a>> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Whether type `id` is, through typedefs and qualifiers, a 4-byte integer.
    fn is_u32(&self, mut id: u32) -> bool {
        // A chain longer than this is a loop in malformed data.
        for _ in 0..16 {
            let Some(ty) = self.by_id(id) else {
                return false;
            };
            match ty.kind {
                KIND_INT => return ty.size_or_type == 4,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return false,
            }
        }
        false
    }

    fn field_offsets<const N: usize>(
        &self,
        strukt: &str,
        fields: [&str; N],
    ) -> Result<[u32; N], BtfError> {
        let found = self
            .types
            .iter()
            .find(|ty| ty.kind == KIND_STRUCT && self.name(ty.name_off) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let mut offsets = [0; N];
        for (offset, field) in offsets.iter_mut().zip(fields) {
            *offset = found
                .extra
                .chunks_exact(12)
                .take(found.vlen)
                .find_map(|member| {
                    let word = |i: usize| {
                        u32::from_ne_bytes(member[i..i + 4].try_into().unwrap_or_default())
                    };
                    let (name, type_id, bits) = (word(0), word(4), word(8));
                    // With kind_flag the top byte is a bit field's size: never ours.
                    let (bit_offset, bitfield) = if found.kind_flag {
                        (bits & 0x00ff_ffff, bits >> 24)
                    } else {
                        (bits, 0)
                    };
                    (self.name(name) == field.as_bytes()
                        && bitfield == 0
                        && bit_offset % 8 == 0
                        && self.is_u32(type_id))
                    .then_some(bit_offset / 8)
                })
                .ok_or_else(|| BtfError::NoField {
                    strukt: strukt.to_string(),
                    field: field.to_string(),
                })?;
        }
        Ok(offsets)
    }
}

/// Walks the type section: each type is 12 bytes, then data whose size its kind sets.
fn parse_types(mut section: &[u8]) -> Result<Vec<Type<'_>>, BtfError> {
    let mut types = Vec::new();
    while !section.is_empty() {
        let word = |at: usize| -> Result<u32, BtfError> {
            section
                .get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default()))
                .ok_or(BtfError::Malformed("type truncated"))
        };
        let (name_off, info, size_or_type) = (word(0)?, word(4)?, word(8)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let extra_len = match kind {
            // INT, VAR, DECL_TAG: one word.
            1 | 14 | 17 => 4,
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
            2 | 7..=12 | 16 | 18 => 0,
            // ARRAY.
            3 => 12,
            // STRUCT, UNION, DATASEC, ENUM64: three words per member.
            4 | 5 | 15 | 19 => 12 * vlen,
            // ENUM, FUNC_PROTO: two words per member.
            6 | 13 => 8 * vlen,
            _ => return Err(BtfError::Malformed("unknown type kind")),
        };
        let extra = section
            .get(12..12 + extra_len)
            .ok_or(BtfError::Malformed("type data truncated"))?;
        types.push(Type {
            name_off,
            kind,
            kind_flag: info >> 31 == 1,
            vlen,
            size_or_type,
            extra,
        });
        section = &section[12 + extra_len..];
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `u32` (typedef of a 4-byte int), a bit field, and `struct s { u32
    /// a; u32 b:3; u32 c; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0u32\0unsigned int\0s\0a\0b\0c\0".to_vec();
        let name = |text: &str| {
            let needle = [b"\0", text.as_bytes(), b"\0"].concat();
            let at = strings.windows(needle.len()).position(|w| w == needle);
            at.map(|p| p as u32 + 1).unwrap()
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_ne_bytes());
            }
        };
        // 1: unsigned int, 4 bytes.
        push(&[name("unsigned int"), KIND_INT << 24, 4, 32]);
        // 2: typedef u32 -> 1.
        push(&[name("u32"), KIND_TYPEDEF << 24, 1]);
        // 3: struct s, kind_flag, 3 members.
        push(&[name("s"), 1 << 31 | KIND_STRUCT << 24 | 3, 12]);
        push(&[name("a"), 2, 0]);
        push(&[name("b"), 2, 3 << 24 | 32]);
        push(&[name("c"), 2, 64]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_ne_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&u32::to_ne_bytes(w));
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn offsets_of_four_byte_fields_are_found_and_bit_fields_refused() {
        let blob = blob();
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(btf.field_offsets("s", ["c", "a"]).unwrap(), [8, 0]);
        assert!(matches!(
            btf.field_offsets("s", ["b"]),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offsets("t", ["a"]),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error_not_a_panic() {
        let blob = blob();
        for len in 0..blob.len() {
            let _ = Btf::parse(&blob[..len]).map(|btf| btf.field_offsets("s", ["c"]));
        }
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }

    #[test]
    fn the_running_kernel_has_the_tcp_sock_fields_the_program_reads() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        }
        let offsets =
            field_offsets("tcp_sock", drain_common::TCP_SOCK_FIELDS).expect("tcp_sock offsets");
        assert!(offsets.iter().all(|&o| o > 0), "{offsets:?}");
    }
}
