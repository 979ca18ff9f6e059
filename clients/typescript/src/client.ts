// A typed client of the agentfactory API: openapi-fetch over the types openapi-typescript generates from
// the server's OpenAPI document (src/schema.d.ts; `npm run openapi && npm run generate`). `tsc` checks
// this file against those types in CI, so a change of the API that breaks a TypeScript caller fails there.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

export type Agent = components["schemas"]["AgentOut"];
export type AgentCreate = components["schemas"]["AgentCreate"];
export type AgentResult = components["schemas"]["AgentResult"];
export type AgentStatus = Agent["status"];
export type LogLine = components["schemas"]["LogLine"];
export type ErrorBody = components["schemas"]["ErrorBody"];
export type ErrorCode = ErrorBody["error"]["code"];

export const TERMINAL: readonly AgentStatus[] = ["succeeded", "failed", "cancelled", "expired"];

/** The error envelope of a non-2xx answer (SPEC §3), thrown by every helper below. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody | undefined,
  ) {
    super(body ? `${body.error.code}: ${body.error.message} (${status})` : `HTTP ${status}`);
  }
  get code(): ErrorCode | undefined {
    return this.body?.error.code;
  }
}

export function agentFactory(baseUrl: string, apiKey: string) {
  const http = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${apiKey}` } });

  function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
    if (result.data === undefined) {
      throw new ApiError(result.response.status, result.error as ErrorBody | undefined);
    }
    return result.data;
  }

  return {
    http,

    async create(body: AgentCreate, idempotencyKey?: string): Promise<Agent> {
      const headers = idempotencyKey ? { "idempotency-key": idempotencyKey } : {};
      return unwrap(await http.POST("/agents", { body, params: { header: headers } }));
    },

    async get(agentId: string): Promise<Agent> {
      return unwrap(await http.GET("/agents/{agent_id}", { params: { path: { agent_id: agentId } } }));
    },

    /** `metadata`: pairs the agents must all have (`GET /agents?metadata.KEY=VALUE`). */
    async list(options: { status?: AgentStatus; limit?: number; metadata?: Record<string, string> } = {}) {
      const selector = Object.fromEntries(
        Object.entries(options.metadata ?? {}).map(([key, value]) => [`metadata.${key}`, value]),
      );
      const query = { status: options.status, limit: options.limit, ...selector };
      const page = unwrap(await http.GET("/agents", { params: { query } }));
      return page.items;
    },

    async cancel(agentId: string): Promise<Agent> {
      return unwrap(await http.DELETE("/agents/{agent_id}", { params: { path: { agent_id: agentId } } }));
    },

    async extend(agentId: string, ttlSeconds: number): Promise<Agent> {
      const params = { path: { agent_id: agentId } };
      return unwrap(await http.POST("/agents/{agent_id}/ttl", { params, body: { ttl_seconds: ttlSeconds } }));
    },

    async result(agentId: string): Promise<AgentResult> {
      return unwrap(await http.GET("/agents/{agent_id}/result", { params: { path: { agent_id: agentId } } }));
    },

    /** The last `tail` lines in one request, or a page after `cursor`. */
    async logs(agentId: string, options: { tail?: number; cursor?: number; stream?: LogLine["stream"] } = {}) {
      const params = { path: { agent_id: agentId }, query: options };
      const page = unwrap(await http.GET("/agents/{agent_id}/logs", { params }));
      return page.lines;
    },

    /** Polls until the agent is terminal. */
    async wait(agentId: string, pollMs = 500): Promise<Agent> {
      for (;;) {
        const agent = await this.get(agentId);
        if (TERMINAL.includes(agent.status)) return agent;
        await new Promise((resolve) => setTimeout(resolve, pollMs));
      }
    },
  };
}

export type AgentFactoryClient = ReturnType<typeof agentFactory>;

// Compile-time checks of the generated types: statuses, reasons and error codes are enums, not strings.
const status: AgentStatus = "running";
// @ts-expect-error "runnning" is not a status
const notAStatus: AgentStatus = "runnning";
const code: ErrorCode = "E_NOT_FOUND";
// @ts-expect-error "E_NOPE" is not an error code
const notACode: ErrorCode = "E_NOPE";
export const _typeChecks = [status, notAStatus, code, notACode];
