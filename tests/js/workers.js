// node: V8 and libuv on several threads, for tests/programs.rs and
// tests/secure.rs (the output must be what glibc's run prints). Four
// worker_threads build maps of strings to Buffers while the main thread
// cycles buffers of up to 70,000 bytes and serialises 200,000 objects;
// then 60 short-lived workers, six at a time, each building and dropping
// arrays: threads that allocate, hand memory to the main thread and exit
// while others start.
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
function mapWorker(seed) {
  const m = new Map(); let s = 0;
  for (let i = 0; i < 150000; i++) {
    m.set('k' + i, Buffer.from('v' + (i * seed)));
    if (i % 3 == 0) m.delete('k' + (i - 1));
  }
  for (const [, v] of m) s += v.length;
  return s;
}
function arrayWorker(seed) {
  const a = []; let s = 0;
  for (let i = 0; i < 30000; i++) {
    a.push(new Array(i % 50).fill(i + seed));
    if (a.length > 1000) s += a.shift().length;
  }
  return s + new Uint8Array(new ArrayBuffer(1 << 20)).reduce((x, y) => x + y, 0);
}
function phase(kind, total, live, done) {
  let started = 0, running = 0, acc = 0;
  const spawn = () => {
    const w = new Worker(__filename, { workerData: { kind, seed: started++ } });
    running++;
    w.on('message', (m) => { acc += m; });
    w.on('error', (e) => { console.error(e); process.exit(1); });
    w.on('exit', () => {
      running--;
      if (started < total) spawn(); else if (running === 0) done(acc);
    });
  };
  for (let i = 0; i < live; i++) spawn();
}
if (isMainThread) {
  phase('map', 4, 4, (acc) => {
    console.log('map workers', acc);
    phase('array', 60, 6, (acc2) => console.log('array workers', acc2));
  });
  const bufs = []; let filled = 0;
  for (let i = 0; i < 20000; i++) {
    bufs.push(Buffer.alloc(1 + (i * 7919) % 70000, i & 255));
    if (bufs.length > 500) filled += bufs.shift().length;
  }
  const o = []; for (let i = 0; i < 200000; i++) o.push({ k: 'x' + i, v: [i, i * 2] });
  const text = JSON.stringify(o);
  console.log('buffers', filled, 'json', text.length, JSON.parse(text).length);
} else {
  const { kind, seed } = workerData;
  parentPort.postMessage(kind === 'map' ? mapWorker(seed + 1) : arrayWorker(seed));
}
