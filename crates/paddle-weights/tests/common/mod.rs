//! Hand-made pickles for the tests: a minimal writer of what `paddle.save` emits.

/// A minimal pickle writer, protocol 4 style (or 2 with `_codecs.encode` bytes).
pub struct P {
    pub b: Vec<u8>,
    proto2: bool,
}

impl P {
    pub fn new(proto: u8) -> Self {
        P {
            b: vec![0x80, proto],
            proto2: proto == 2,
        }
    }
    pub fn op(&mut self, o: &[u8]) -> &mut Self {
        self.b.extend_from_slice(o);
        self
    }
    pub fn s(&mut self, s: &str) -> &mut Self {
        self.b.push(b'X');
        self.b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes())
    }
    pub fn int(&mut self, i: i32) -> &mut Self {
        self.b.push(b'J');
        self.op(&i.to_le_bytes())
    }
    pub fn global(&mut self, m: &str, n: &str) -> &mut Self {
        self.op(format!("c{m}\n{n}\n").as_bytes())
    }
    pub fn raw(&mut self, data: &[u8]) -> &mut Self {
        if self.proto2 {
            let latin: String = data.iter().map(|&b| char::from(b)).collect();
            self.global("_codecs", "encode")
                .s(&latin)
                .s("latin1")
                .op(&[0x86, b'R'])
        } else {
            self.b.push(b'B');
            self.b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            self.op(data)
        }
    }
    pub fn array(&mut self, shape: &[usize], dtype: &str, data: &[u8]) -> &mut Self {
        self.global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "ndarray");
        self.op(&[b'K', 0, 0x85]).raw(b"b").op(&[0x87, b'R']);
        self.op(b"(").int(1).op(b"(");
        for &d in shape {
            self.int(d as i32);
        }
        self.op(b"t")
            .global("numpy", "dtype")
            .s(dtype)
            .op(&[0x89, 0x88, 0x87, b'R']);
        self.op(b"(")
            .op(&[b'K', 3])
            .s("<")
            .op(b"NNN")
            .int(-1)
            .int(-1)
            .op(&[b'K', 0, b't', b'b']);
        self.op(&[0x89]).raw(data).op(b"tb")
    }
    pub fn state_dict(proto: u8, entries: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let mut p = P::new(proto);
        p.op(b"}q\x00(");
        for (k, shape, v) in entries {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            p.s(k).array(shape, "f4", &bytes);
        }
        p.s("StructuredToParameterName@@")
            .op(b"}(")
            .s("a")
            .s("linear_0.w_0")
            .op(b"uu.");
        p.b
    }
}

/// A small valid state dict (protocol 4, two arrays).
pub fn small_valid() -> Vec<u8> {
    P::state_dict(
        4,
        &[
            ("x".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ("y".into(), vec![1], vec![5.0]),
        ],
    )
}
