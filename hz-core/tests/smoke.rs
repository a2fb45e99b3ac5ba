#[global_allocator]
static A: hz_core::HzAlloc = hz_core::HzAlloc;

#[test]
fn smoke() {
    let mut v: Vec<Box<[u8]>> = Vec::new();
    for i in 0..100000usize {
        let n = (i * 7919) % 5000 + 1;
        v.push(vec![(i & 0xff) as u8; n].into_boxed_slice());
        if i % 3 == 0 {
            let j = (i * 31) % v.len();
            let b = v.swap_remove(j);
            assert!(b.iter().all(|&x| x == b[0]));
        }
    }
    let s = hz_core::stats();
    assert!(s.allocated > 0);
    drop(v);
    let big = vec![1u8; 10 << 20];
    assert_eq!(big[12345], 1);
}
