// The error vocabulary of the API: each class maps to one HTTP status and one envelope code.

export interface FieldIssue {
  field: string;
  message: string;
}

/** An error the API reports as `{ error: { code, message, details? } }` with a fixed status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = new.target.name;
  }

  toBody(): { error: { code: string; message: string; details?: unknown } } {
    return { error: { code: this.code, message: this.message, ...(this.details === undefined ? {} : { details: this.details }) } };
  }
}

export class BadRequest extends ApiError {
  constructor(
    message: string,
    readonly fields: FieldIssue[] = [],
  ) {
    super(400, "InvalidInput", message, fields.length ? fields : undefined);
  }
}

export class Unauthorized extends ApiError {
  constructor(message = "missing or invalid credentials") {
    super(401, "Unauthorized", message);
  }
}

export class NotFound extends ApiError {
  constructor(what: string, id: string) {
    super(404, "NotFound", `${what} '${id}' does not exist`, { [what]: id });
  }
}

export class Conflict extends ApiError {
  constructor(code: string, message: string, details?: unknown) {
    super(409, code, message, details);
  }
}

export class PayloadTooLarge extends ApiError {
  constructor(limitBytes: number) {
    super(413, "PayloadTooLarge", `request body exceeds ${limitBytes} bytes`);
  }
}

/** The state machine refused a transition: 409 with the current state. */
export class IllegalState extends Conflict {
  constructor(itemId: string, state: string, action: string) {
    super("IllegalState", `replicated item '${itemId}' is ${state}: cannot ${action}`, { itemId, state });
  }
}

/** Azure storage error codes and statuses: decides retry vs give-up in one place. */
export function storageStatus(e: unknown): number | undefined {
  const s = (e as { statusCode?: unknown })?.statusCode;
  return typeof s === "number" ? s : undefined;
}

export function storageCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown; details?: { errorCode?: unknown } })?.details?.errorCode ?? (e as { code?: unknown })?.code;
  return typeof c === "string" ? c : undefined;
}

export function isNotFound(e: unknown): boolean {
  return storageStatus(e) === 404;
}

export function isConflict(e: unknown): boolean {
  return storageStatus(e) === 409;
}

/** Network failures, throttling and server errors are worth retrying; 4xx (but 408/429) are not. */
export function isTransient(e: unknown): boolean {
  const s = storageStatus(e);
  if (s === undefined) {
    const code = (e as { code?: unknown })?.code;
    return typeof code === "string" && /^(ECONNRESET|ECONNREFUSED|ETIMEDOUT|EPIPE|EAI_AGAIN|REQUEST_SEND_ERROR)$/.test(code);
  }
  return s === 408 || s === 429 || s >= 500;
}

/** Another processor holds the replica's lease (409 LeaseAlreadyPresent, or its lease is being broken): not a failure, the work is someone else's. */
export function isLeaseHeld(e: unknown): boolean {
  const code = storageCode(e);
  return storageStatus(e) === 409 && (code === "LeaseAlreadyPresent" || code === "LeaseIsBreakingAndCannotBeAcquired");
}

/**
 * A write refused by its fence (412: our lease was broken or taken, or the replica's sequence number is not the
 * watermark we read): this processor is stale and must stop, never retry.
 */
export function isFenced(e: unknown): boolean {
  return storageStatus(e) === 412;
}

/** What a caller is told to wait before trying again when storage is not reachable (503). */
export const STORAGE_RETRY_AFTER_SECONDS = 5;

/**
 * Storage cannot be reached (connection refused or reset, DNS, a timeout) or says it is unavailable (503): the API
 * answers 503 with Retry-After, never a 500 — decided here, for every route.
 */
export function isStorageUnavailable(e: unknown): boolean {
  const s = storageStatus(e);
  if (s === 503) return true;
  if (s !== undefined) return false;
  const code = (e as { code?: unknown })?.code;
  const name = (e as { name?: unknown })?.name;
  return (
    (typeof code === "string" && /^(ECONNRESET|ECONNREFUSED|ETIMEDOUT|EPIPE|EAI_AGAIN|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|REQUEST_SEND_ERROR)$/.test(code)) ||
    name === "AbortError" ||
    name === "TimeoutError"
  );
}
