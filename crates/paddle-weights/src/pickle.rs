//! A pickle reader for the subset `paddle.save` writes: a dict of numpy arrays.
//!
//! It executes nothing. Globals are resolved against a fixed allow-list (numpy's array
//! reconstruction, `numpy.dtype`, `_codecs.encode`, `collections.OrderedDict`, `bytes`); any other global
//! is an error naming it and its byte offset. Every length claim is checked against the bytes that
//! remain before anything is allocated, so memory stays proportional to the file size; memo
//! references to mutable containers are refused (so nothing is copied twice) and nesting is capped
//! (so dropping a value cannot overflow the stack).
//!
//! Protocols 2 to 5: `GLOBAL`/`STACK_GLOBAL`, `numpy.core`/`numpy._core` module names, array bytes
//! as `_codecs.encode(str, 'latin1')` or, when empty, `bytes()` (protocol 2), `SHORT_BINBYTES`/`BINBYTES`/`BINBYTES8`/
//! `BYTEARRAY8`, `BINPUT`/`LONG_BINPUT`/`MEMOIZE`/`BINGET`/`LONG_BINGET`, `FRAME`.

use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of tuples, lists and dicts accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a pickle could not be read. Offsets are byte positions of the opcode in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    /// The data ends inside an opcode or before `STOP`.
    #[error("truncated at byte {offset}: opcode {opcode:#04x} needs {needed} more bytes")]
    Truncated {
        /// Offset of the opcode.
        offset: usize,
        /// The opcode.
        opcode: u8,
        /// Bytes it needed beyond the end.
        needed: usize,
    },
    /// A length field claims more bytes than the file has left.
    #[error(
        "byte {offset}: opcode {opcode:#04x} claims {claimed} bytes but only {available} remain"
    )]
    LengthTooLarge {
        /// Offset of the opcode.
        offset: usize,
        /// The opcode.
        opcode: u8,
        /// The claimed length.
        claimed: u64,
        /// Bytes left in the file.
        available: usize,
    },
    /// An opcode outside the supported subset.
    #[error("byte {offset}: unsupported pickle opcode {opcode:#04x}")]
    UnsupportedOpcode {
        /// Offset of the opcode.
        offset: usize,
        /// The opcode.
        opcode: u8,
    },
    /// A global outside the allow-list (e.g. `os.system`): refused, never resolved.
    #[error("byte {offset}: refusing global `{module}.{name}` (only numpy arrays and dtypes are allowed)")]
    ForbiddenGlobal {
        /// Offset of the opcode.
        offset: usize,
        /// Module path.
        module: String,
        /// Attribute name.
        name: String,
    },
    /// Anything else malformed: an empty stack, a bad memo index, arguments of the wrong kind.
    #[error("byte {offset}: {msg}")]
    Invalid {
        /// Offset of the opcode.
        offset: usize,
        /// What is wrong.
        msg: String,
    },
}

/// Element types of numpy arrays we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// float16
    F16,
    /// float32
    F32,
    /// float64
    F64,
    /// int8
    I8,
    /// int16
    I16,
    /// int32
    I32,
    /// int64
    I64,
    /// uint8
    U8,
    /// bool
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
            Dtype::F16 | Dtype::I16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    /// numpy's short name, e.g. `f4`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f2",
            Dtype::F32 => "f4",
            Dtype::F64 => "f8",
            Dtype::I8 => "i1",
            Dtype::I16 => "i2",
            Dtype::I32 => "i4",
            Dtype::I64 => "i8",
            Dtype::U8 => "u1",
            Dtype::Bool => "b1",
        }
    }

    fn parse(code: &str) -> Option<Self> {
        let code = code.trim_start_matches(['<', '|', '=']);
        Some(match code {
            "f2" | "float16" => Dtype::F16,
            "f4" | "float32" => Dtype::F32,
            "f8" | "float64" => Dtype::F64,
            "i1" | "int8" => Dtype::I8,
            "i2" | "int16" => Dtype::I16,
            "i4" | "int32" => Dtype::I32,
            "i8" | "int64" => Dtype::I64,
            "u1" | "uint8" => Dtype::U8,
            "b1" | "bool" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// A numpy array as pickled: little-endian raw bytes, C or Fortran order.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `dtype.size() * prod(shape)` bytes.
    pub data: Rc<Vec<u8>>,
    /// Column-major element order.
    pub fortran_order: bool,
}

impl NdArray {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The callables the reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `numpy.core.multiarray._reconstruct`
    Reconstruct,
    /// `numpy.ndarray`
    NdArrayType,
    /// `numpy.dtype`
    DtypeType,
    /// `numpy.core.numeric._frombuffer` (protocol 5 arrays)
    FromBuffer,
    /// `_codecs.encode` (protocol 2 bytes)
    CodecsEncode,
    /// `collections.OrderedDict`
    OrderedDict,
    /// `bytes` (`__builtin__` in protocol 2): how Python 3 pickles empty bytes for protocol
    /// 2, e.g. the data of an empty array.
    Bytes,
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    let numpy_core = matches!(module, "numpy.core.multiarray" | "numpy._core.multiarray");
    let numpy_numeric = matches!(module, "numpy.core.numeric" | "numpy._core.numeric");
    Some(match (module, name) {
        (_, "_reconstruct") if numpy_core => Global::Reconstruct,
        (_, "_frombuffer") if numpy_numeric => Global::FromBuffer,
        ("numpy", "ndarray") => Global::NdArrayType,
        ("numpy", "dtype") => Global::DtypeType,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("__builtin__" | "builtins", "bytes") => Global::Bytes,
        _ => return None,
    })
}

/// A Python value from the pickle. Containers carry their nesting depth.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(Rc<str>),
    /// bytes or bytearray.
    Bytes(Rc<Vec<u8>>),
    /// A tuple (depth).
    Tuple(Rc<Vec<Value>>, usize),
    /// A list (depth).
    List(Vec<Value>, usize),
    /// A dict or OrderedDict, in insertion order (depth).
    Dict(Vec<(Value, Value)>, usize),
    /// One of the allowed callables.
    Global(Global),
    /// A numpy dtype.
    Dtype(Dtype),
    /// A numpy array; `None` data while `_reconstruct` waits for its `BUILD`.
    Array(Option<Rc<NdArray>>),
    /// What a memo slot holds for a list or dict: fetching it again is refused.
    MutableRef,
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }

    /// The Python type's name, for messages (never the value: a value can print exponentially
    /// long when its tuples share memoised parts).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(..) => "tuple",
            Value::List(..) => "list",
            Value::Dict(..) => "dict",
            Value::Global(_) => "global",
            Value::Dtype(_) => "dtype",
            Value::Array(_) => "ndarray",
            Value::MutableRef => "memo reference",
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    opcode: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let avail = self.data.len() - self.pos;
        if n > avail {
            return Err(PickleError::Truncated {
                offset: self.op_start,
                opcode: self.opcode,
                needed: n - avail,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    /// A length-prefixed payload, the length checked against what remains first.
    fn payload(&mut self, len: u64) -> Result<&'a [u8], PickleError> {
        let available = self.data.len() - self.pos;
        match usize::try_from(len) {
            Ok(n) if n <= available => self.take(n),
            _ => Err(PickleError::LengthTooLarge {
                offset: self.op_start,
                opcode: self.opcode,
                claimed: len,
                available,
            }),
        }
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PickleError::Truncated {
                offset: self.op_start,
                opcode: self.opcode,
                needed: 1,
            });
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.invalid("a GLOBAL name is not UTF-8"))
    }

    fn invalid(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Invalid {
            offset: self.op_start,
            msg: msg.into(),
        }
    }
}

struct Machine<'a> {
    r: Reader<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// `_codecs.encode` results by the address of the string they came from (the string kept
    /// alive beside them), so that encoding one memoised string many times shares one buffer
    /// instead of multiplying the file's bytes.
    encoded: HashMap<usize, (Rc<str>, Rc<Vec<u8>>)>,
}

/// Parses a whole pickle and returns the value `STOP` leaves on the stack.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        r: Reader {
            data,
            pos: 0,
            op_start: 0,
            opcode: 0,
        },
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        encoded: HashMap::new(),
    };
    loop {
        m.r.op_start = m.r.pos;
        let Some(&op) = data.get(m.r.pos) else {
            return Err(PickleError::Truncated {
                offset: m.r.pos,
                opcode: 0,
                needed: 1,
            });
        };
        m.r.opcode = op;
        m.r.pos += 1;
        if op == b'.' {
            return m.pop();
        }
        m.step(op)?;
    }
}

fn str_of(bytes: &[u8], r: &Reader) -> Result<Value, PickleError> {
    std::str::from_utf8(bytes)
        .map(|s| Value::Str(Rc::from(s)))
        .map_err(|_| r.invalid("a string is not valid UTF-8"))
}

fn latin1(bytes: &[u8]) -> Value {
    let s: String = bytes.iter().map(|&b| char::from(b)).collect();
    Value::Str(Rc::from(s.as_str()))
}

impl Machine<'_> {
    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.r.invalid("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.r.invalid("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.r.invalid("stack underflow"));
        }
        let err = self.r.invalid("stack underflow");
        self.stack.last_mut().ok_or(err)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.r.invalid("no MARK on the stack"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let depth = items.iter().map(Value::depth).max().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(self.r.invalid(format!("nesting deeper than {MAX_DEPTH}")));
        }
        self.push(Value::Tuple(Rc::new(items), depth));
        Ok(())
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = match self.top()? {
            Value::List(..) | Value::Dict(..) => Value::MutableRef,
            v => v.clone(),
        };
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), PickleError> {
        match self.memo.get(&idx) {
            None => Err(self.r.invalid(format!("memo index {idx} was never stored"))),
            Some(Value::MutableRef) => Err(self.r.invalid(format!(
                "memo index {idx}: shared references to a list or dict are not supported"
            ))),
            Some(v) => {
                let v = v.clone();
                self.push(v);
                Ok(())
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let err = self.r.invalid("APPEND(S) needs a list below its items");
        let deep = self.r.invalid(format!("nesting deeper than {MAX_DEPTH}"));
        match self.top()? {
            Value::List(v, d) => {
                for it in items {
                    *d = (*d).max(it.depth() + 1);
                    v.push(it);
                }
                if *d > MAX_DEPTH {
                    return Err(deep);
                }
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// Adds key-value pairs in file order. Keys are not compared: comparing tuples that share
    /// memoised parts costs time exponential in their depth, and `pickle.dumps` of a dict never
    /// repeats a key; the caller decides what a repeated key means.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.r.invalid("SETITEMS with an odd number of items"));
        }
        let err = self.r.invalid("SETITEM(S) needs a dict below its items");
        let deep = self.r.invalid(format!("nesting deeper than {MAX_DEPTH}"));
        match self.top()? {
            Value::Dict(v, d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(val)) = (it.next(), it.next()) {
                    *d = (*d).max(k.depth().max(val.depth()) + 1);
                    v.push((k, val));
                }
                if *d > MAX_DEPTH {
                    return Err(deep);
                }
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        match resolve_global(module, name) {
            Some(g) => {
                self.push(Value::Global(g));
                Ok(())
            }
            None => Err(PickleError::ForbiddenGlobal {
                offset: self.r.op_start,
                module: module.into(),
                name: name.into(),
            }),
        }
    }

    fn step(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                let proto = self.r.u8()?;
                if !(2..=5).contains(&proto) {
                    return Err(self
                        .r
                        .invalid(format!("pickle protocol {proto} (2-5 supported)")));
                }
            }
            0x95 => {
                // FRAME: a length hint only
                self.r.le::<8>()?;
            }
            b'}' => self.push(Value::Dict(Vec::new(), 1)),
            b']' => self.push(Value::List(Vec::new(), 1)),
            b')' => self.tuple(Vec::new())?,
            b'(' => self.marks.push(self.stack.len()),
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.r.le()?);
                self.push(Value::Int(v.into()))
            }
            b'K' => {
                let v = self.r.u8()?;
                self.push(Value::Int(v.into()))
            }
            b'M' => {
                let v = u16::from_le_bytes(self.r.le()?);
                self.push(Value::Int(v.into()))
            }
            0x8a => {
                let n = self.r.u8()?;
                let b = self.r.payload(n.into())?;
                if b.len() > 8 {
                    return Err(self.r.invalid("LONG1 integer wider than 64 bits"));
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..b.len()].copy_from_slice(b);
                self.push(Value::Int(i64::from_le_bytes(buf)))
            }
            b'G' => {
                let v = f64::from_be_bytes(self.r.le()?);
                self.push(Value::Float(v))
            }
            b'X' => {
                let n = u32::from_le_bytes(self.r.le()?);
                let b = self.r.payload(n.into())?;
                let v = str_of(b, &self.r)?;
                self.push(v)
            }
            0x8c => {
                let n = self.r.u8()?;
                let b = self.r.payload(n.into())?;
                let v = str_of(b, &self.r)?;
                self.push(v)
            }
            0x8d => {
                let n = u64::from_le_bytes(self.r.le()?);
                let b = self.r.payload(n)?;
                let v = str_of(b, &self.r)?;
                self.push(v)
            }
            b'T' => {
                // BINSTRING (Python 2 str), read as latin-1 text
                let n = i32::from_le_bytes(self.r.le()?);
                let n =
                    u64::try_from(n).map_err(|_| self.r.invalid("negative BINSTRING length"))?;
                let b = self.r.payload(n)?;
                self.push(latin1(b))
            }
            b'U' => {
                let n = self.r.u8()?;
                let b = self.r.payload(n.into())?;
                self.push(latin1(b))
            }
            b'C' => {
                let n = self.r.u8()?;
                let b = self.r.payload(n.into())?;
                self.push(Value::Bytes(Rc::new(b.to_vec())))
            }
            b'B' => {
                let n = u32::from_le_bytes(self.r.le()?);
                let b = self.r.payload(n.into())?;
                self.push(Value::Bytes(Rc::new(b.to_vec())))
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(self.r.le()?);
                let b = self.r.payload(n)?;
                self.push(Value::Bytes(Rc::new(b.to_vec())))
            }
            0x97 | 0x98 => {
                return Err(self
                    .r
                    .invalid("out-of-band buffers (protocol 5) are not supported"))
            }
            b'q' => {
                let i = self.r.u8()?;
                self.memo_put(i.into())?
            }
            b'r' => {
                let i = u32::from_le_bytes(self.r.le()?);
                self.memo_put(i)?
            }
            0x94 => {
                let i =
                    u32::try_from(self.memo.len()).map_err(|_| self.r.invalid("memo overflow"))?;
                self.memo_put(i)?
            }
            b'h' => {
                let i = self.r.u8()?;
                self.memo_get(i.into())?
            }
            b'j' => {
                let i = u32::from_le_bytes(self.r.le()?);
                self.memo_get(i)?
            }
            b'c' => {
                let module = self.r.line()?;
                let name = self.r.line()?;
                self.global(module, name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                    _ => return Err(self.r.invalid("STACK_GLOBAL needs two strings")),
                }
            }
            b't' => {
                let items = self.pop_mark()?;
                self.tuple(items)?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.tuple(items)?
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = match self.top()? {
                    Value::List(..) | Value::Dict(..) => {
                        return Err(self.r.invalid("DUP of a list or dict is not supported"))
                    }
                    v => v.clone(),
                };
                self.push(v)
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args)?;
                self.push(v)
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.pop()?;
                let v = self.build(obj, state)?;
                self.push(v)
            }
            _ => {
                return Err(PickleError::UnsupportedOpcode {
                    offset: self.r.op_start,
                    opcode: op,
                })
            }
        }
        Ok(())
    }

    fn call(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return Err(self.r.invalid(format!("cannot call a {}", callable.kind())));
        };
        let Value::Tuple(args, _) = args else {
            return Err(self.r.invalid("call arguments are not a tuple"));
        };
        let bad = |what: &str| self.r.invalid(format!("{g:?}: {what}"));
        match (g, args.as_slice()) {
            (Global::Reconstruct, [Value::Global(Global::NdArrayType), ..]) => {
                Ok(Value::Array(None))
            }
            (Global::DtypeType, [Value::Str(code), ..]) => Dtype::parse(code)
                .map(Value::Dtype)
                .ok_or_else(|| bad(&format!("unsupported dtype `{code}`"))),
            (Global::CodecsEncode, [Value::Str(s), enc]) => {
                if !matches!(enc, Value::Str(e) if e.as_ref() == "latin1" || e.as_ref() == "latin-1")
                {
                    return Err(bad("only latin1 encoding is supported"));
                }
                let key = Rc::as_ptr(s).cast::<u8>() as usize;
                if let Some((_, b)) = self.encoded.get(&key) {
                    return Ok(Value::Bytes(b.clone()));
                }
                let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c).ok()).collect();
                let b = Rc::new(bytes.ok_or_else(|| bad("a character outside latin-1"))?);
                self.encoded.insert(key, (s.clone(), b.clone()));
                Ok(Value::Bytes(b))
            }
            (Global::OrderedDict, []) => Ok(Value::Dict(Vec::new(), 1)),
            (Global::Bytes, []) => Ok(Value::Bytes(Rc::new(Vec::new()))),
            (
                Global::FromBuffer,
                [Value::Bytes(buf), Value::Dtype(dtype), Value::Tuple(shape, _), Value::Str(order)],
            ) => {
                let shape = shape_of(shape).ok_or_else(|| bad("shape is not a tuple of sizes"))?;
                let arr = array(*dtype, shape, buf.clone(), order.as_ref() == "F")
                    .map_err(|m| bad(&m))?;
                Ok(Value::Array(Some(Rc::new(arr))))
            }
            _ => Err(bad("unexpected arguments")),
        }
    }

    fn build(&self, obj: Value, state: Value) -> Result<Value, PickleError> {
        let bad = |what: &str| self.r.invalid(format!("BUILD: {what}"));
        match (obj, &state) {
            (Value::Array(None), Value::Tuple(st, _)) => match st.as_slice() {
                [Value::Int(_), Value::Tuple(shape, _), Value::Dtype(dtype), Value::Bool(fortran), Value::Bytes(raw)] =>
                {
                    let shape =
                        shape_of(shape).ok_or_else(|| bad("shape is not a tuple of sizes"))?;
                    let arr = array(*dtype, shape, raw.clone(), *fortran).map_err(|m| bad(&m))?;
                    Ok(Value::Array(Some(Rc::new(arr))))
                }
                [_, _, _, _, Value::List(..)] => Err(bad("object arrays are not supported")),
                _ => Err(bad("unexpected ndarray state")),
            },
            (Value::Dtype(d), Value::Tuple(st, _)) => match st.get(1) {
                Some(Value::Str(order)) if order.as_ref() == ">" && d.size() > 1 => {
                    Err(bad("big-endian arrays are not supported"))
                }
                _ => Ok(Value::Dtype(d)),
            },
            (obj, _) => Err(bad(&format!("cannot set the state of a {}", obj.kind()))),
        }
    }
}

fn shape_of(items: &[Value]) -> Option<Vec<usize>> {
    items
        .iter()
        .map(|v| match v {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        })
        .collect()
}

fn array(
    dtype: Dtype,
    shape: Vec<usize>,
    data: Rc<Vec<u8>>,
    fortran: bool,
) -> Result<NdArray, String> {
    let bytes = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if bytes != data.len() {
        return Err(format!(
            "shape {shape:?} of {} needs {bytes} bytes, the data has {}",
            dtype.name(),
            data.len()
        ));
    }
    Ok(NdArray {
        dtype,
        shape,
        data,
        fortran_order: fortran,
    })
}
