/*
 * fe_listen.h - one loop's listeners: every [listener.NAME] section (listen,
 * role, proxy; docs/config.md) is bound with SO_REUSEPORT, so each loop of
 * each frontend process binds every listener and the kernel spreads the
 * connections over them, and every accepted connection becomes a session
 * (fe_session.h).
 *
 * Ownership: the listeners live in the server's `listeners` array, which
 * fe_server_free() releases; fe_listen_close() only closes their sockets.
 *
 * Threads: the server's loop.  Errors: fe_listen_open() answers MS_ECONFIG
 * (a bad section) or MS_EIO (bind or listen failed) with the reason in
 * `err`; listeners opened before the failure stay open until
 * fe_listen_close().  A failed accept is logged and the listener goes on.
 */
#ifndef FE_LISTEN_H
#define FE_LISTEN_H

#include <stddef.h>

#include "fe_server.h"
#include "ms_config.h"

/* Bind and listen for every [listener.*] section (after the server's TLS
 * context and password table are set: roles other than mx need them). */
int fe_listen_open(struct fe_server *srv, const ms_config *cfg, char *err, size_t errlen);
/* Stop accepting (draining); sessions already accepted carry on. */
void fe_listen_close(struct fe_server *srv);

#endif
