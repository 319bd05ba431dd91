/**
 * hearth's errors as TypeScript classes: one per `kind` of the API's error body
 * (`{"error": {"kind", "message", ...}}`), all extending {@link HearthError}. Switch on the class
 * (`err instanceof Busy`) or on `err.kind`, never on the message.
 */

/** The error body's `error` member: its kind, its message and the kind's own fields. */
export interface ErrorJson {
  kind: string;
  message: string;
  [field: string]: unknown;
}

export interface ErrorContext {
  /** The HTTP status the daemon answered (undefined when it did not answer). */
  status?: number | undefined;
  /** `Retry-After` of the answer, in seconds (on a 503 or 423). */
  retryAfter?: number | undefined;
}

/** The root of every error: `kind`, `message`, `status`, and the body's other fields in `data`. */
export class HearthError extends Error {
  /** The kind the daemon named; a class of its own for each kind it documents. */
  readonly kind: string;
  readonly status: number | undefined;
  /** Seconds the daemon asked the client to wait before asking again (`Retry-After`). */
  readonly retryAfter: number | undefined;
  /** The error body's fields besides `kind` and `message` (`operation`, `existing`, `errors`, ...). */
  readonly data: Readonly<Record<string, unknown>>;

  constructor(kind: string, message: string, data: Record<string, unknown> = {}, context: ErrorContext = {}) {
    super(message);
    this.name = new.target.name;
    this.kind = kind;
    this.status = context.status;
    this.retryAfter = context.retryAfter;
    this.data = Object.freeze({ ...data });
  }

  /**
   * Whether asking again later may succeed (`busy`, `timeout`, `unavailable`, ...): the daemon's
   * `retryable`; for an error the daemon did not send (no answer), true.
   */
  get retryable(): boolean {
    return typeof this.data.retryable === "boolean" ? this.data.retryable : this.status === undefined;
  }

  /** The error as the API writes it. */
  toJSON(): ErrorJson {
    return { ...this.data, kind: this.kind, message: this.message };
  }
}

type Fields = Record<string, unknown>;

/** Bad input (400): a malformed slug, an unknown tier or driver, a bad parameter or body. */
export class InvalidInput extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("invalid_input", message, data, context);
  }
  /** The problems found, when the daemon lists them. */
  get errors(): unknown[] {
    return Array.isArray(this.data.errors) ? this.data.errors : [];
  }
}

/** No such workspace or operation (404). An {@link InvalidInput}, as in Python. */
export class NotFound extends InvalidInput {
  override readonly kind: string = "not_found";
}

/** Another operation runs on the slug and this start asks for something else (409). */
export class Busy extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("busy", message, data, context);
  }
  /** The id of the operation that holds the slug. */
  get operation(): number | undefined {
    return typeof this.data.operation === "number" ? this.data.operation : undefined;
  }
}

/** The request conflicts with what exists (409): another tier, another driver, a reused key. */
export class Conflict extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("conflict", message, data, context);
  }
  /** The existing deployment's ref, when the daemon names it. */
  get existing(): Record<string, unknown> | undefined {
    const value = this.data.existing;
    return value !== null && typeof value === "object" ? (value as Record<string, unknown>) : undefined;
  }
  /** Why, from a fixed set: `key_reused`, `other_tier`, `other_driver`, `recorded`, `backend`. */
  get reason(): string | undefined {
    return typeof this.data.reason === "string" ? this.data.reason : undefined;
  }
}

/** The verb is not allowed from the workspace's state (409), or the operation already finished. */
export class InvalidTransition extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("invalid_transition", message, data, context);
  }
  get state(): string | undefined {
    return typeof this.data.state === "string" ? this.data.state : undefined;
  }
}

/** The adapter refused the tier's profile (422). */
export class InvalidProfile extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("invalid_profile", message, data, context);
  }
  get errors(): string[] {
    return Array.isArray(this.data.errors) ? this.data.errors.map(String) : [];
  }
}

/** The adapter does not do that (422), e.g. `plan`. */
export class Unsupported extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("unsupported", message, data, context);
  }
}

/** Another process kept the slug busy past the lock wait (423, `Retry-After`). */
export class SlugLocked extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("slug_locked", message, data, context);
  }
}

/** The backend could not be reached (503). */
export class BackendUnavailable extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("backend_unavailable", message, data, context);
  }
}

/** The backend failed (502); `rolledBack` says whether it undid its work. */
export class BackendFailure extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("backend_failure", message, data, context);
  }
  get rolledBack(): boolean {
    return this.data.rolled_back === true;
  }
  get logs(): string[] {
    return Array.isArray(this.data.logs) ? this.data.logs.map(String) : [];
  }
}

/** The operation was cancelled (its result), or the adapter answered a cancel (502). */
export class Cancelled extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("cancelled", message, data, context);
  }
  get rolledBack(): boolean | undefined {
    return typeof this.data.rolled_back === "boolean" ? this.data.rolled_back : undefined;
  }
}

/** No answer within the bound (504 from the daemon, or this client's own bound on a request). */
export class CallTimeout extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("timeout", message, data, context);
  }
  /** True when the adapter confirmed its rollback, false when it could not, undefined when unknown. */
  get rolledBack(): boolean | undefined {
    return typeof this.data.rolled_back === "boolean" ? this.data.rolled_back : undefined;
  }
}

/** No adapter executable for the driver (502). */
export class AdapterNotFound extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("adapter_not_found", message, data, context);
  }
}

/** The adapter was refused: permissions, trust, the lock, the protocol version (502). */
export class AdapterRefused extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("adapter_refused", message, data, context);
  }
}

/** The adapter's process died (502). */
export class AdapterCrashed extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("adapter_crashed", message, data, context);
  }
}

/** The adapter broke the protocol (502). */
export class ProtocolViolation extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("protocol_violation", message, data, context);
  }
}

/** The TCP listener refused the token (401). */
export class Unauthorized extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("unauthorized", message, data, context);
  }
}

/**
 * The token (or the Unix socket, narrowed by `--socket-scopes`) lacks the scope the route needs
 * (403); `scope` names it: `read`, `operate` or `admin`.
 */
export class Forbidden extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("forbidden", message, data, context);
  }

  /** The scope the request needed. */
  get scope(): string | undefined {
    return typeof this.data.scope === "string" ? this.data.scope : undefined;
  }
}

/** The store cannot be used (500, or 503 from `/v1/ready`). */
export class StoreError extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("store_error", message, data, context);
  }
}

/** The operation's host stopped before it finished (its result). */
export class Interrupted extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("interrupted", message, data, context);
  }
}

/** The daemon's host is closing (503). */
export class Closed extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("closed", message, data, context);
  }
}

/** The daemon is draining (503 with `Retry-After`): it answers reads, refuses new starts. */
export class Unavailable extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("unavailable", message, data, context);
  }
}

/**
 * No daemon answers at the address (no socket, refused, dropped), or it refused the connection
 * (503 past `[serve] max_connections`).
 */
export class DaemonUnavailable extends HearthError {
  constructor(message: string, data: Fields = {}, context: ErrorContext = {}) {
    super("daemon_unavailable", message, data, context);
  }
}

type ErrorClass = new (message: string, data?: Fields, context?: ErrorContext) => HearthError;

/** The class of each kind the API documents. */
export const ERRORS: Readonly<Record<string, ErrorClass>> = Object.freeze({
  invalid_input: InvalidInput,
  not_found: NotFound,
  busy: Busy,
  conflict: Conflict,
  invalid_transition: InvalidTransition,
  invalid_profile: InvalidProfile,
  unsupported: Unsupported,
  slug_locked: SlugLocked,
  backend_unavailable: BackendUnavailable,
  backend_failure: BackendFailure,
  cancelled: Cancelled,
  timeout: CallTimeout,
  adapter_not_found: AdapterNotFound,
  adapter_refused: AdapterRefused,
  adapter_crashed: AdapterCrashed,
  protocol_violation: ProtocolViolation,
  unauthorized: Unauthorized,
  forbidden: Forbidden,
  store_error: StoreError,
  interrupted: Interrupted,
  closed: Closed,
  unavailable: Unavailable,
  daemon_unavailable: DaemonUnavailable,
});

/** The typed error of an error body's `error` (or an operation's recorded `error`). */
export function errorFromJson(json: unknown, context: ErrorContext = {}): HearthError {
  const body = json !== null && typeof json === "object" ? (json as Record<string, unknown>) : {};
  const kind = typeof body.kind === "string" && body.kind ? body.kind : "error";
  const message = typeof body.message === "string" ? body.message : kind;
  const data: Fields = {};
  for (const [key, value] of Object.entries(body)) {
    if (key !== "kind" && key !== "message") data[key] = value;
  }
  // the body's `retry_after` (a draining daemon's) when no Retry-After header said it
  const retryAfter = context.retryAfter ?? (typeof body.retry_after === "number" ? body.retry_after : undefined);
  const told = { ...context, retryAfter };
  const known = Object.hasOwn(ERRORS, kind) ? ERRORS[kind] : undefined;
  return known ? new known(message, data, told) : new HearthError(kind, message, data, told);
}
