/*
 * tlscheck.h - `mailstream-authcheck tls-check DOMAIN` (tools/tlscheck.c):
 * the outbound TLS policy the worker would apply, and a test connection.
 * Runs its own loop on the calling thread; returns the exit status.
 */
#ifndef TLSCHECK_H
#define TLSCHECK_H

int tlscheck_main(int argc, char **argv);

#endif
