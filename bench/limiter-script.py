#!/usr/bin/env python3
# What the Redis limiter's script costs Redis: CPU time of the local
# redis-server (from /proc/<pid>/stat) per request, one reserve and one
# settle on a key with every limit, as the batcher sends them at batch sizes
# 1, 4 and 16, beside the script of an earlier revision (before batching:
# one call per operation, pipelined). Loopback only; keys under `iso:{sb}:`.
#
#   bench/limiter-script.py [REVISION]     # default 15c2ef4 (before batching)
import os, socket, sys, time, random
PID = int(os.popen('pgrep redis-server').read().split()[0])
def cpu():
    f = open(f'/proc/{PID}/stat').read().split(')')[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
s = socket.create_connection(('127.0.0.1', 6379))
buf = b''
def send(*args):
    out = b'*%d\r\n' % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b'$%d\r\n%s\r\n' % (len(a), a)
    s.sendall(out)
def read():
    global buf
    def line():
        global buf
        while b'\r\n' not in buf: buf += s.recv(65536)
        l, buf = buf.split(b'\r\n', 1); return l
    l = line()
    t = l[:1]
    if t == b'*':
        return [read() for _ in range(int(l[1:]))]
    if t == b'$':
        n = int(l[1:])
        if n < 0: return None
        while len(buf) < n + 2: buf += s.recv(65536)
        v, buf = buf[:n], buf[n+2:]; return v
    if t == b':': return int(l[1:])
    if t == b'-': raise Exception(l)
    return l
def call(*a): send(*a); return read()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVISION = sys.argv[1] if len(sys.argv) > 1 else '15c2ef4'
old = call('SCRIPT', 'LOAD', os.popen(f'git -C {ROOT} show {REVISION}:crates/store/src/redis_limiter.lua').read()).decode()
new = call('SCRIPT', 'LOAD', open(os.path.join(ROOT, 'crates/store/src/redis_limiter.lua')).read()).decode()
M = int(time.time() // 60); P = 'iso:{sb}'
call('SET', P + ':epoch', 1)
LIM = ['100000', '100000000', '1000000000', '1000000000000000', '90000']
def keys(k): return [f'{P}:key:{k}:inflight', f'{P}:key:{k}:m:{M}', f'{P}:key:{k}:spent:d1', f'{P}:key:{k}:held:d1']
def old_round(k, key):
    ids = [f'{P}:grant:{random.getrandbits(64):x}' for _ in range(k)]
    for g in ids:  # pipelined, as the multiplexed connection did
        send('EVALSHA', old, 6, g, P + ':epoch', *keys(key), 'reserve', 100, 1000, M, 15, 120, 1020, 1, *LIM)
    for g in ids: assert read()[0] == 0
    for g in ids:
        send('EVALSHA', old, 6, g, P + ':epoch', *keys(key), 'settle', -10, -1000, 500, 1020, 'done', '', '', *LIM)
    for g in ids: read()
def new_round(k, key):
    ids = [f'{P}:grant:{random.getrandbits(64):x}' for _ in range(k)]
    head = [P + ':epoch', *keys(key)]
    slot = ['batch', 15, 120, 1020, 1, 2, 3, 4, 5, *LIM]
    r = call('EVALSHA', new, 5 + k, *head, *ids, *slot, *sum([['r', 100, 1000, M, 1, 1, 1] for _ in ids], []))
    assert r[0] == 0, r
    call('EVALSHA', new, 5 + k, *head, *ids, *slot, *sum([['s', -10, 1000, 500, 0, 1, 1] for _ in ids], []))
for k in [1, 4, 16]:
    for name, fn in [('old', old_round), ('new', new_round)]:
        n = 12000 // k
        best = None
        for trial in range(3):
            a = cpu(); t = time.time()
            for _ in range(n): fn(k, f'{name}{k}')
            b = cpu()
            per = (b - a) / (n * k) * 1e6
            best = per if best is None else min(best, per)
        print(f'k={k:2d} {name}: Redis CPU {best:5.1f} us per request (reserve+settle), best of 3', flush=True)
keys = call('KEYS', P + ':*')
if keys:
    call('DEL', *keys)
