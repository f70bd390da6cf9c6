import type { FastifyRequest } from 'fastify'
import type { Scope } from '../scopes.js'

/**
 * What a route declares about itself, in its options' `config`, and which plugin acts on each flag:
 * declared here, once. Fastify infers a route's `config` type from what it is given, so a misspelt flag
 * would pass unnoticed: a route gives its flags as RouteFlags (`satisfies RouteFlags`), and plugins
 * read them through routeFlagsOf.
 */
export interface RouteFlags {
  /** The route reads a request body (uploads, imports); every other route refuses one (request-policy). */
  acceptsBody?: boolean
  /** Errors on this route carry `fallback_url` (DEFAULT_PORTRAIT_URL) so the bot can fall back in one step (problem-details). */
  offersFallback?: boolean
  /** A route outside /v1/* that still needs an API key: /metrics on the public port (auth). */
  requiresApiKey?: boolean
  /**
   * The scope a key needs on this route, or 'none' for one any valid key may call (auth answers 403
   * `forbidden` to a key without it). Every /v1/* route declares one: auth refuses to register a route
   * that does not, so a new route is never open to every key by omission.
   */
  scope?: Scope | 'none'
}

declare module 'fastify' {
  interface FastifyContextConfig extends RouteFlags {}
}

/** The flags of the route a request matched (none for a request that matched no route). */
export const routeFlagsOf = (request: FastifyRequest): RouteFlags => request.routeOptions.config

/** The flags of a route that stores an image: an upload, an import. */
export const STORING_ROUTE = { acceptsBody: true, offersFallback: true, scope: 'upload' } as const satisfies RouteFlags

/** Path prefixes matched outside the routes that own them. Every route under API_PREFIX needs an API key (auth). */
export const API_PREFIX = '/v1/'
export const IMAGES_PREFIX = '/v1/images/'
export const FILES_PREFIX = '/files/'
/** The routes whose path ends in an object key. */
export const KEY_ROUTE_PREFIXES = [IMAGES_PREFIX, FILES_PREFIX] as const
