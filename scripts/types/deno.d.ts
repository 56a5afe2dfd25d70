// The part of Deno's API the Deno host uses, so that tsc can emit its
// JavaScript and declarations in `npm run build`. Deno itself checks the host
// against its real types (`deno check`, and `deno publish --dry-run` in the tests).

declare namespace Deno {
  type Signal = 'SIGTERM' | 'SIGINT' | 'SIGHUP' | 'SIGBREAK';
  interface NetAddr {
    transport: 'tcp' | 'udp';
    hostname: string;
    port: number;
  }
  interface HttpServer {
    readonly finished: Promise<void>;
    shutdown(): Promise<void>;
  }
  interface ServeOptions {
    port?: number;
    hostname?: string;
    onListen?: (localAddr: NetAddr) => void;
  }
  interface UpgradeWebSocketOptions {
    idleTimeout?: number;
  }
  const env: { toObject(): Record<string, string> };
  function exit(code?: number): never;
  function addSignalListener(signal: Signal, handler: () => void): void;
  function upgradeWebSocket(request: Request, options?: UpgradeWebSocketOptions): { socket: WebSocket; response: Response };
  interface ServeHandlerInfo {
    remoteAddr: NetAddr;
  }
  function serve(options: ServeOptions, handler: (request: Request, info: ServeHandlerInfo) => Response | Promise<Response>): HttpServer;
}
