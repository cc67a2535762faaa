//! A minimal reader of struct layouts from an object's `.BTF` section, for
//! the C/Rust ABI check (Cilium's alignchecker idea): aya-obj parses BTF but
//! does not expose struct members. Never panics on malformed input.

use std::collections::HashMap;

/// A struct as described by BTF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtfStruct {
    /// Size in bytes.
    pub size: usize,
    /// `(name, byte offset, byte size)` per member.
    pub members: Vec<(String, usize, usize)>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The `.BTF` section of a little-endian ELF64 object.
pub fn btf_section(elf: &[u8]) -> Option<&[u8]> {
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = usize::from(u16_at(elf, 0x3a)?);
    let shnum = usize::from(u16_at(elf, 0x3c)?);
    let shstrndx = usize::from(u16_at(elf, 0x3e)?);
    let sh = |i: usize| -> Option<(u32, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(elf, base)?,
            u64_at(elf, base + 0x18)? as usize,
            u64_at(elf, base + 0x20)? as usize,
        ))
    };
    let (_, stroff, strsize) = sh(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    for i in 0..shnum {
        let (name, off, size) = sh(i)?;
        let name = strtab.get(name as usize..)?;
        let end = name.iter().position(|&c| c == 0)?;
        if &name[..end] == b".BTF" {
            return elf.get(off..off.checked_add(size)?);
        }
    }
    None
}

struct Ty {
    kind: u32,
    name: u32,
    vlen: usize,
    kflag: bool,
    size_or_type: u32,
    extra: usize, // offset of the kind-specific data in `types`
}

/// Names of the maps an object defines (the variables of its `.maps`
/// BTF data section).
pub fn map_names(elf: &[u8]) -> Option<Vec<String>> {
    let btf = btf_section(elf)?;
    if u16_at(btf, 0)? != 0xeb9f {
        return None;
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let type_off = u32_at(btf, 8)? as usize;
    let type_len = u32_at(btf, 12)? as usize;
    let str_off = u32_at(btf, 16)? as usize;
    let str_len = u32_at(btf, 20)? as usize;
    let types = btf.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strs = btf.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let name = |off: u32| -> Option<String> {
        let s = strs.get(off as usize..)?;
        let end = s.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    // (kind, name offset, extra offset, vlen) per type id.
    let mut tys: Vec<(u32, u32, usize, usize)> = vec![(0, 0, 0, 0)];
    let mut o = 0;
    while o + 12 <= types.len() {
        let info = u32_at(types, o + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let extra = o + 12;
        tys.push((kind, u32_at(types, o)?, extra, vlen));
        o = extra + trailing_len(kind, vlen);
    }
    let mut out = Vec::new();
    for &(kind, name_off, extra, vlen) in &tys {
        if kind != 15 || name(name_off)? != ".maps" {
            continue;
        }
        for i in 0..vlen {
            let var = u32_at(types, extra + i * 12)? as usize;
            let (vkind, vname, _, _) = *tys.get(var)?;
            if vkind == 14 {
                out.push(name(vname)?);
            }
        }
    }
    out.sort();
    Some(out)
}

fn trailing_len(kind: u32, vlen: usize) -> usize {
    match kind {
        1 => 4,
        3 => 12,
        4 | 5 => vlen * 12,
        6 => vlen * 8,
        13 => vlen * 8,
        14 => 4,
        15 => vlen * 12,
        17 => 4,
        19 => vlen * 12,
        _ => 0,
    }
}

/// Every named struct of an object's BTF.
pub fn structs(elf: &[u8]) -> Option<HashMap<String, BtfStruct>> {
    let btf = btf_section(elf)?;
    if u16_at(btf, 0)? != 0xeb9f {
        return None;
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let type_off = u32_at(btf, 8)? as usize;
    let type_len = u32_at(btf, 12)? as usize;
    let str_off = u32_at(btf, 16)? as usize;
    let str_len = u32_at(btf, 20)? as usize;
    let types = btf.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strs = btf.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let name = |off: u32| -> Option<String> {
        let s = strs.get(off as usize..)?;
        let end = s.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    };

    let mut tys: Vec<Option<Ty>> = vec![None]; // id 0 = void
    let mut o = 0;
    while o + 12 <= types.len() {
        let name_off = u32_at(types, o)?;
        let info = u32_at(types, o + 4)?;
        let st = u32_at(types, o + 8)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let extra = o + 12;
        let trailing = trailing_len(kind, vlen);
        tys.push(Some(Ty {
            kind,
            name: name_off,
            vlen,
            kflag: info >> 31 != 0,
            size_or_type: st,
            extra,
        }));
        o = extra + trailing;
    }

    fn size_of(tys: &[Option<Ty>], types: &[u8], id: u32, depth: u32) -> Option<usize> {
        if depth > 32 {
            return None;
        }
        let t = tys.get(id as usize)?.as_ref()?;
        match t.kind {
            1 | 4 | 5 | 6 | 16 | 19 => Some(t.size_or_type as usize),
            2 => Some(8),
            3 => {
                let elem = u32_at(types, t.extra)?;
                let n = u32_at(types, t.extra + 8)? as usize;
                Some(n * size_of(tys, types, elem, depth + 1)?)
            }
            8..=11 | 18 => size_of(tys, types, t.size_or_type, depth + 1),
            _ => None,
        }
    }

    let mut out = HashMap::new();
    for t in tys.iter().flatten() {
        if t.kind != 4 || t.name == 0 {
            continue;
        }
        let mut members = Vec::new();
        for i in 0..t.vlen {
            let m = t.extra + i * 12;
            let mname = name(u32_at(types, m)?)?;
            let mtype = u32_at(types, m + 4)?;
            let raw = u32_at(types, m + 8)?;
            let bits = if t.kflag { raw & 0x00ff_ffff } else { raw };
            members.push((
                mname,
                (bits / 8) as usize,
                size_of(&tys, types, mtype, 0).unwrap_or(0),
            ));
        }
        out.insert(
            name(t.name)?,
            BtfStruct {
                size: t.size_or_type as usize,
                members,
            },
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Object;

    /// Every Rust ABI struct matches the C struct in every object that
    /// contains it, field by field; each struct appears in some object.
    #[test]
    fn abi_structs_match_btf() {
        let per_obj: Vec<(Object, HashMap<String, BtfStruct>)> = Object::ALL
            .iter()
            .map(|o| (*o, structs(o.bytes()).expect("BTF of object")))
            .collect();
        for layout in fibril_abi::layouts() {
            let mut seen = false;
            for (obj, st) in &per_obj {
                let Some(c) = st.get(layout.c_name) else {
                    continue;
                };
                seen = true;
                assert_eq!(
                    c.size,
                    layout.size,
                    "{}: size of struct {} ({}) != {} ({})",
                    obj.name(),
                    layout.c_name,
                    c.size,
                    layout.rust_name,
                    layout.size
                );
                let c_members: Vec<(&str, usize, usize)> = c
                    .members
                    .iter()
                    .map(|(n, o, s)| (n.as_str(), *o, *s))
                    .collect();
                assert_eq!(
                    c_members,
                    layout.fields,
                    "{}: fields of struct {} differ from {}",
                    obj.name(),
                    layout.c_name,
                    layout.rust_name
                );
            }
            assert!(
                seen,
                "struct {} not found in any object's BTF",
                layout.c_name
            );
        }
    }

    /// Every map of every object is listed in `fibril_abi::map_names::ALL`
    /// and has a layout check; every listed name exists in some object.
    #[test]
    fn every_map_is_listed_and_checked() {
        let mut in_objects = std::collections::BTreeSet::new();
        for o in Object::ALL {
            for m in map_names(o.bytes()).expect("maps of object") {
                in_objects.insert(m);
            }
        }
        assert!(in_objects.contains("fibril_ct4"));
        let listed: std::collections::BTreeSet<String> = fibril_abi::map_names::ALL
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(in_objects, listed, "maps.h vs fibril_abi::map_names::ALL");
        for m in &listed {
            assert!(
                crate::maps::expected_sizes(m).is_some(),
                "{m} has no entry in maps::expected_sizes()"
            );
        }
    }

    #[test]
    fn malformed_input_is_none() {
        assert!(structs(b"").is_none());
        assert!(structs(b"\x7fELF\x02\x01garbage").is_none());
        let obj = Object::Lxc.bytes();
        for cut in [10, 64, obj.len() / 2] {
            let _ = structs(&obj[..cut]);
        }
    }
}
