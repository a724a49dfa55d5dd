/*
 * ms_list.h - an intrusive doubly linked list: circular, around a head node.
 *
 * An element embeds a struct ms_list (its node) and its owner keeps another
 * (the head); ms_list_entry() leads from a node back to its element, so one
 * element can sit on several lists through several nodes.  Insertion and
 * removal are O(1), need no search and allocate nothing.
 *
 * Ownership: the list owns nothing.  Removing a node neither frees nor
 * touches its element; an element is freed by its owner after it has been
 * removed from every list it was on.
 *
 * States: a head must be set up with ms_list_init() (or MS_LIST_HEAD_INIT)
 * before any other call; an empty list is a head pointing at itself.  A node
 * is either on exactly one list or off every list.  A zeroed node (calloc,
 * `= {0}`) is off, and so is a node after ms_list_remove(): ms_list_linked()
 * tells which, and ms_list_remove() of a node that is off does nothing, so an
 * element that may or may not be listed can always be removed.  Inserting a
 * node that is already on a list corrupts both lists (not checked).
 *
 * Iteration: ms_list_foreach() must not remove the current node (use
 * ms_list_foreach_safe(), which may remove it but no other node).  Adding
 * nodes while iterating is allowed at the tail; whether the loop sees them is
 * not promised.
 *
 * Threads: none of its own; a list is used by one thread at a time, like the
 * elements on it.  Errors: none; every call succeeds.
 */
#ifndef MS_LIST_H
#define MS_LIST_H

#include <stddef.h>

struct ms_list {
    struct ms_list *prev, *next;
};

/* A head defined with its initialiser: `struct ms_list h = MS_LIST_HEAD_INIT(h);` */
#define MS_LIST_HEAD_INIT(name) {&(name), &(name)}

/* The element of `type` whose `member` is the node `node`. */
#define ms_list_entry(node, type, member) \
    ((type *)(void *)((char *)(node) - offsetof(type, member)))

/* Every node of `head` in order, `pos` a struct ms_list *. */
#define ms_list_foreach(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* The same, but `pos` may be removed (and its element freed) in the body;
 * `tmp` is a second struct ms_list * holding the next node. */
#define ms_list_foreach_safe(pos, tmp, head)                                                       \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

/* An empty list. */
static inline void ms_list_init(struct ms_list *head)
{
    head->prev = head->next = head;
}

/* 1 when the list has no node. */
static inline int ms_list_empty(const struct ms_list *head)
{
    return head->next == head;
}

/* 1 when the node is on a list (see "States" above). */
static inline int ms_list_linked(const struct ms_list *node)
{
    return node->next != NULL;
}

static inline void ms_list__insert_between(struct ms_list *node, struct ms_list *prev,
                                           struct ms_list *next)
{
    node->prev = prev;
    node->next = next;
    prev->next = node;
    next->prev = node;
}

/* Put `node` (off every list) first. */
static inline void ms_list_insert_head(struct ms_list *head, struct ms_list *node)
{
    ms_list__insert_between(node, head, head->next);
}

/* Put `node` (off every list) last. */
static inline void ms_list_insert_tail(struct ms_list *head, struct ms_list *node)
{
    ms_list__insert_between(node, head->prev, head);
}

/* Take `node` off its list; nothing when it is on none. */
static inline void ms_list_remove(struct ms_list *node)
{
    if (node->next == NULL)
        return;
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = NULL;
}

/* The first node, or NULL when the list is empty. */
static inline struct ms_list *ms_list_first(const struct ms_list *head)
{
    return head->next == head ? NULL : head->next;
}

/* The node after `node` on the list `head`, or NULL when it is the last. */
static inline struct ms_list *ms_list_next(const struct ms_list *head, const struct ms_list *node)
{
    return node->next == head ? NULL : node->next;
}

#endif
