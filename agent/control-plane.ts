// The agent's calls to the site-recovery service: register once, check in periodically, fetch resync manifests.
import type { z } from "zod";
import {
  checkinResponseSchema,
  manifestResponseSchema,
  registrationResponseSchema,
  type CheckinRequest,
  type CheckinResponse,
  type ManifestRequest,
  type ManifestResponse,
  type RegistrationResponse,
} from "../shared/protection/agent-protocol";

/** The service answered with an error (status and the API's error code), or could not be reached (status 0). */
export class ControlPlaneError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ControlPlaneError";
  }
  get statusCode(): number | undefined {
    return this.status || undefined;
  }
}

const TIMEOUT_MS = 60_000;

export class ControlPlane {
  private readonly stopping = new AbortController();

  constructor(
    private readonly baseUrl: string,
    private readonly functionKey?: string,
  ) {}

  /** Abandons calls in flight (the agent is stopping). */
  abort(): void {
    this.stopping.abort();
  }

  /** `replace`: another agent is registered for the item and this one takes over (the other is locked out). */
  register(token: string, replace = false): Promise<RegistrationResponse> {
    return this.post("agents/register", { token, ...(replace ? { replace: true } : {}) }, registrationResponseSchema);
  }

  checkin(body: CheckinRequest): Promise<CheckinResponse> {
    return this.post("agents/checkin", body, checkinResponseSchema);
  }

  manifest(body: ManifestRequest): Promise<ManifestResponse> {
    return this.post("agents/resync-manifest", body, manifestResponseSchema);
  }

  private async post<S extends z.ZodTypeAny>(path: string, body: unknown, schema: S): Promise<z.infer<S>> {
    const url = `${this.baseUrl.replace(/\/+$/, "")}/api/${path}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", ...(this.functionKey ? { "x-functions-key": this.functionKey } : {}) },
        body: JSON.stringify(body),
        signal: AbortSignal.any([AbortSignal.timeout(TIMEOUT_MS), this.stopping.signal]),
      });
    } catch (e) {
      throw new ControlPlaneError(0, "Unreachable", `cannot reach ${url}: ${(e as Error).message}`);
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      throw new ControlPlaneError(res.status, "BadResponse", `${url} answered ${res.status} with a body that is not JSON`);
    }
    if (!res.ok) {
      const err = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new ControlPlaneError(res.status, err?.code ?? String(res.status), `${path}: ${res.status} ${err?.message ?? res.statusText}`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      throw new ControlPlaneError(
        res.status,
        "BadResponse",
        `${path}: unexpected response: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`,
      );
    }
    return parsed.data;
  }
}
