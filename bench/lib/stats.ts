// Small numeric helpers shared by the load client, the core bench and the report.

/** A bounded sample store: past its capacity it keeps every 2nd, 4th, … value. */
export class Samples {
  private buf: Float64Array;
  private n = 0;
  private stride = 1;
  private skip = 0;
  count = 0;

  constructor(capacity = 1 << 20) {
    this.buf = new Float64Array(capacity);
  }

  add(v: number): void {
    this.count++;
    if (++this.skip < this.stride) return;
    this.skip = 0;
    if (this.n === this.buf.length) {
      for (let i = 0; i < this.n / 2; i++) this.buf[i] = this.buf[i * 2];
      this.n = this.n / 2;
      this.stride *= 2;
    }
    this.buf[this.n++] = v;
  }

  percentiles(ps: number[]): number[] {
    const a = this.buf.slice(0, this.n).sort();
    return ps.map((p) => (a.length ? a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))] : NaN));
  }
}

export function median(xs: number[]): number {
  const a = xs.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
  if (a.length === 0) return NaN;
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
}
