"""Crypto mini: RSA key generation, signing, RC4 and a hash chain, in steps.

A small "secure telemetry" program.  It first generates a 512-bit RSA key
pair: candidate primes are drawn from a random.Random(seed) instance and
tested with Miller-Rabin, a few candidates per callback (set_immediate
between batches).  Then a timer produces telemetry messages; each message
is signed (RSA over a SHA-256 digest) and verified, encrypted with a
stateful RC4 cipher whose S-box persists between callbacks (a second RC4
instance with the same key decrypts in lockstep), authenticated with HMAC,
and appended to a SHA-256 hash chain kept as bytes.
Migration features: big ints (512/1024-bit), a random.Random state in the
middle of prime search, RC4 S-boxes as lists of 256 ints inside objects,
bytes/bytearray values, hashlib/hmac used only transiently (hash objects
are never stored: they cannot be captured), imported modules in globals.
"""

import hashlib
import hmac
import random

BITS = 256                     # per prime
MESSAGES = 30
rng = random.Random(20240601)
SMALL_PRIMES = [p for p in range(3, 200) if all(p % q for q in range(2, int(p ** 0.5) + 1))]


def is_probable_prime(n, rounds=16):
    if n < 2:
        return False
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        a = rng.randrange(2, n - 2)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


class RC4:
    def __init__(self, key):
        s = list(range(256))
        j = 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) % 256
            s[i], s[j] = s[j], s[i]
        self.s = s
        self.i = 0
        self.j = 0
        self.produced = 0

    def crypt(self, data):
        s, i, j = self.s, self.i, self.j
        out = bytearray()
        for byte in data:
            i = (i + 1) % 256
            j = (j + s[i]) % 256
            s[i], s[j] = s[j], s[i]
            out.append(byte ^ s[(s[i] + s[j]) % 256])
        self.i, self.j = i, j
        self.produced += len(data)
        return bytes(out)


keygen = {"primes": [], "candidates": 0, "batches": 0}
key = {}
session = {"n": 0, "chain": b"\x00" * 32, "ciphertext_bytes": 0, "verified": 0, "log": []}


def search_batch():
    keygen["batches"] += 1
    for _ in range(6):
        cand = rng.getrandbits(BITS) | (1 << (BITS - 1)) | (1 << (BITS - 2)) | 1
        keygen["candidates"] += 1
        if is_probable_prime(cand):
            keygen["primes"].append(cand)
            print(f"prime #{len(keygen['primes'])} after {keygen['candidates']} candidates "
                  f"({keygen['batches']} batches): ...{cand % 10**12:012d}")
            if len(keygen["primes"]) == 2:
                make_key()
                return
    if keygen["batches"] % 3:
        things.set_immediate(search_batch)
    else:
        things.set_timeout(search_batch, 0.01)


def make_key():
    p, q = keygen["primes"]
    n = p * q
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    key.update(n=n, e=e, d=d)
    secret = hashlib.sha256(n.to_bytes(64, "big")).digest()
    key["mac_key"] = secret[:16]
    key["tx"] = RC4(secret[16:])
    key["rx"] = RC4(secret[16:])
    print(f"key: n has {n.bit_length()} bits, d has {d.bit_length()} bits, "
          f"n mod 1e9 = {n % 10**9}")
    session["timer"] = things.set_interval(send, 0.1)


def send():
    k = session["n"]
    msg = f"reading {k}: temp={20 + (k * 7) % 11}.{k % 10} seq={k}".encode()
    digest = hashlib.sha256(msg).digest()
    h = int.from_bytes(digest, "big") % key["n"]
    sig = pow(h, key["d"], key["n"])
    ok = pow(sig, key["e"], key["n"]) == h
    session["verified"] += ok
    ct = key["tx"].crypt(msg)
    tag = hmac.new(key["mac_key"], ct, "sha256").hexdigest()[:16]
    pt = key["rx"].crypt(ct)
    session["chain"] = hashlib.sha256(session["chain"] + ct).digest()
    session["ciphertext_bytes"] += len(ct)
    session["log"].append((k, ct[:4].hex(), tag))
    if k % 3 == 0:
        print(f"msg {k:2d}: sig ...{sig % 16**10:010x} {'ok' if ok else 'BAD'} "
              f"ct {ct[:8].hex()} mac {tag} roundtrip={'ok' if pt == msg else 'BAD'}")
    session["n"] = k + 1
    if session["n"] == MESSAGES:
        things.clear_timer(session["timer"])
        print(f"rc4 state: i={key['tx'].i} j={key['tx'].j} produced={key['tx'].produced} "
              f"sbox sum={sum(key['tx'].s)} in-sync={key['tx'].s == key['rx'].s}")
        print(f"result: {session['verified']}/{MESSAGES} signatures verified, "
              f"chain {session['chain'].hex()[:32]}")


things.set_immediate(search_batch)
