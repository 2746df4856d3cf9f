// Rate limits for what a guest can make kilnd record (docs/security.md, "Bounded guest input"):
// console markers (`@kiln:warn` …, which root in the guest can forge by writing to the serial
// port) and agent hellos become events and log lines, so each VM gets a token bucket. When it
// runs dry the rest is dropped and counted, and the VM gets a single `rate_limited` notice,
// itself limited to one per `noticeEveryMs`, carrying how many were dropped since the last one.

/** Classic token bucket: `rate` tokens per second, at most `burst` saved up. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = now();
  }

  take(n = 1): boolean {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.rate);
    this.last = t;
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }
}

export type GateVerdict = { pass: true } | { pass: false; notice: { dropped: number } | null };

export class GuestInputGate {
  private readonly bucket: TokenBucket;
  private dropped = 0;
  private lastNotice = -Infinity;

  constructor(
    rate: number,
    burst: number,
    private readonly noticeEveryMs = 10_000,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.bucket = new TokenBucket(rate, burst, now);
  }

  /** Whether this event may be recorded; when not, maybe the one notice to record instead. */
  admit(): GateVerdict {
    if (this.bucket.take()) return { pass: true };
    this.dropped++;
    const t = this.now();
    if (t - this.lastNotice < this.noticeEveryMs) return { pass: false, notice: null };
    this.lastNotice = t;
    const notice = { dropped: this.dropped };
    this.dropped = 0;
    return { pass: false, notice };
  }
}
