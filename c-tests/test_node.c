/*
 * test_node.c — the node transport through the C API over real loopback
 * sockets: two nodes sharing a secret connect; a node with a wrong secret
 * is refused and the refusal is counted on both sides; options and
 * arguments are checked; an event callback may use its node while the
 * node closes (stats answer, close is BUSY, dialing is CLOSED). Waits are
 * on the event callback (a condition
 * variable), never on time.
 */
#include "keel_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static const char SECRET[] = "cluster secret 0123456789";
static const char WRONG[] = "not the cluster secret 42";

/* What a node's event callback saw, guarded by mu. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int ready;   /* peers that finished their handshake */
  int refused; /* connections ended with KEEL_STATUS_REFUSED */
  /* When set, a CLOSED event calls back into this node and records the
   * answers (the node is closing: its handle must still be valid). */
  keel_node_t *node;
  int closed;
  keel_status_t stats_rc, close_rc, connect_rc;
  uint64_t stats_peers_seen;
} events_t;

static void on_event(void *user, uint64_t peer_id, keel_status_t status, const char *message) {
  events_t *e = user;
  (void)peer_id;
  CHECK(message != NULL);
  pthread_mutex_lock(&e->mu);
  if (status == KEEL_STATUS_OK) e->ready++;
  if (status == KEEL_STATUS_REFUSED) e->refused++;
  if (status == KEEL_STATUS_CLOSED && e->node != NULL) {
    keel_node_stats_t s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    e->stats_rc = keel_node_stats(e->node, &s);
    e->stats_peers_seen = s.handshakes;
    e->close_rc = keel_node_close(e->node, NULL);
    e->connect_rc = keel_node_connect(e->node, 9, "127.0.0.1:1", NULL);
    e->closed++;
  }
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

static void events_init(events_t *e) {
  memset(e, 0, sizeof *e);
  CHECK(pthread_mutex_init(&e->mu, NULL) == 0);
  CHECK(pthread_cond_init(&e->cv, NULL) == 0);
}

/* Blocks until *counter reaches n (the ctest timeout guards a hang). */
static void events_wait(events_t *e, const int *counter, int n) {
  pthread_mutex_lock(&e->mu);
  while (*counter < n) pthread_cond_wait(&e->cv, &e->mu);
  pthread_mutex_unlock(&e->mu);
}

static void events_destroy(events_t *e) {
  pthread_cond_destroy(&e->cv);
  pthread_mutex_destroy(&e->mu);
}

static keel_node_t *open_node(keel_engine_t *engine, uint64_t id, const char *secret, events_t *events) {
  KT_ERR;
  keel_node_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  o.node_id = id;
  o.listen_addr = "127.0.0.1:0";
  o.secret = (const uint8_t *)secret;
  o.secret_len = strlen(secret);
  o.handshake_timeout_ms = 2000;
  o.close_timeout_ms = 1000;
  o.on_event = on_event;
  o.user_data = events;
  keel_node_t *node = NULL;
  CHECK_OK(keel_node_open(engine, &o, &node, &err));
  CHECK(node != NULL);
  return node;
}

static void addr_of(keel_node_t *node, char *buf, size_t cap) {
  size_t len = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_node_addr(node, buf, cap, &len));
  CHECK(len == strlen(buf) + 1);
  CHECK(strncmp(buf, "127.0.0.1:", 10) == 0);
  CHECK(strcmp(buf, "127.0.0.1:0") != 0); /* port 0 picked a port */
}

static keel_node_stats_t stats_of(keel_node_t *node) {
  keel_node_stats_t s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  CHECK_RC(KEEL_STATUS_OK, keel_node_stats(node, &s));
  return s;
}

static void two_nodes_with_a_secret_connect(keel_engine_t *engine) {
  KT_ERR;
  events_t ea, eb;
  events_init(&ea);
  events_init(&eb);
  keel_node_t *a = open_node(engine, 1, SECRET, &ea);
  keel_node_t *b = open_node(engine, 2, SECRET, &eb);
  char addr[64];
  addr_of(a, addr, sizeof addr);

  CHECK_OK(keel_node_connect(b, 1, addr, &err));
  keel_node_stats_t s = stats_of(b);
  CHECK_EQ_U64(s.peers, 1);
  CHECK_EQ_U64(s.dialed, 1);
  CHECK_EQ_U64(s.handshakes, 1);
  events_wait(&ea, &ea.ready, 1); /* the acceptor's side of the handshake */
  s = stats_of(a);
  CHECK_EQ_U64(s.accepted, 1);
  CHECK_EQ_U64(s.handshakes, 1);

  /* b's callback runs during its close (the connection ends with CLOSED)
   * and calls back into b: the handle must stay valid until the close has
   * joined that thread (it was freed first once, and this read freed
   * memory). */
  pthread_mutex_lock(&eb.mu);
  eb.node = b;
  pthread_mutex_unlock(&eb.mu);
  keel_node_stats_t fin;
  memset(&fin, 0, sizeof fin);
  fin.struct_size = sizeof fin;
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(b, &fin));
  CHECK_EQ_U64(fin.closed_by_shutdown, 1);
  CHECK_EQ_U64(fin.cancelled_frames, 0);
  /* The close joined the thread that ran the callback: no lock needed. */
  CHECK(eb.closed == 1);
  CHECK_RC(KEEL_STATUS_OK, eb.stats_rc);
  CHECK_EQ_U64(eb.stats_peers_seen, 1);
  CHECK_RC(KEEL_STATUS_BUSY, eb.close_rc);
  CHECK_RC(KEEL_STATUS_CLOSED, eb.connect_rc);
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(a, NULL));
  events_destroy(&ea);
  events_destroy(&eb);
}

static void a_wrong_secret_is_refused_and_counted(keel_engine_t *engine) {
  KT_ERR;
  events_t ea, ec;
  events_init(&ea);
  events_init(&ec);
  keel_node_t *a = open_node(engine, 1, SECRET, &ea);
  keel_node_t *c = open_node(engine, 3, WRONG, &ec);
  char addr[64];
  addr_of(a, addr, sizeof addr);

  CHECK_STATUS(KEEL_STATUS_REFUSED, keel_node_connect(c, 1, addr, &err));
  keel_node_stats_t s = stats_of(c);
  CHECK_EQ_U64(s.refused_bad_mac, 1);
  CHECK_EQ_U64(s.peers, 0);
  char text[512];
  size_t len = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_node_last_error(c, text, sizeof text, &len));
  CHECK(strstr(text, "MAC") != NULL);
  CHECK_RC(KEEL_STATUS_BUFFER_TOO_SMALL, keel_node_last_error(c, text, 1, &len));
  CHECK(len > 1);

  events_wait(&ea, &ea.refused, 1); /* the acceptor refused c as well */
  s = stats_of(a);
  CHECK_EQ_U64(s.refused_bad_mac, 1);
  CHECK_EQ_U64(s.handshakes, 0);

  CHECK_RC(KEEL_STATUS_OK, keel_node_close(c, NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(a, NULL));
  events_destroy(&ea);
  events_destroy(&ec);
}

static void arguments_are_checked(keel_engine_t *engine) {
  KT_ERR;
  keel_node_options_t o;
  keel_node_t *node = NULL;
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_open(engine, &o, &node, &err)); /* node_id 0 */
  o.node_id = 5;
  o.secret = (const uint8_t *)"short";
  o.secret_len = 5;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_open(engine, &o, &node, &err));
  o.secret_len = 0;
  o.struct_size = 8;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_open(engine, &o, &node, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  o.node_id = 5;
  /* An address that does not parse is the caller's mistake, not IO. */
  const char *bad_addrs[] = {"not an address", "", "127.0.0.1:99999"};
  for (size_t i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
    o.listen_addr = bad_addrs[i];
    CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_open(engine, &o, &node, &err));
  }
  o.listen_addr = NULL;
  /* The padding of version 2 may mean something later: 0 only. */
  o._reserved2 = 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_open(engine, &o, &node, &err));
  o._reserved2 = 0;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_node_open(NULL, &o, &node, &err));
  CHECK_OK(keel_node_open(engine, &o, &node, &err));
  char tiny[4];
  size_t len = 0;
  CHECK_RC(KEEL_STATUS_BUFFER_TOO_SMALL, keel_node_addr(node, tiny, sizeof tiny, &len));
  CHECK(len > sizeof tiny);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_node_connect(node, 2, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_connect(node, 5, "127.0.0.1:1", &err));
  keel_node_stats_t s;
  s.struct_size = 4;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_node_stats(node, &s));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(node, NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(NULL, NULL));
}

/* Version 2 of the node structs adds max_handshakes and
 * refused_handshake_limit at their ends: a version-1 caller gets the
 * default bound, and its stats struct is written up to its own size. */
static void version_2_adds_the_handshake_bound(keel_engine_t *engine) {
  KT_ERR;
  CHECK_EQ_U64(offsetof(keel_node_options_t, max_handshakes), KEEL_NODE_OPTIONS_SIZE_V1);
  CHECK_EQ_U64(sizeof(keel_node_options_t), KEEL_NODE_OPTIONS_SIZE_V2);
  CHECK_EQ_U64(offsetof(keel_node_stats_t, refused_handshake_limit), KEEL_NODE_STATS_SIZE_V1);
  CHECK_EQ_U64(offsetof(keel_node_stats_t, replaced_connections), KEEL_NODE_STATS_SIZE_V2);
  CHECK_EQ_U64(sizeof(keel_node_stats_t), KEEL_NODE_STATS_SIZE_V3);
  keel_node_options_t o;
  keel_node_t *node = NULL;
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.max_handshakes, 0); /* fields past version 1 default to 0 */
  o.node_id = 5;
  o.max_handshakes = 65537;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_node_open(engine, &o, &node, &err));
  o.max_handshakes = 0;
  CHECK_OK(keel_node_open(engine, &o, &node, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(node, NULL));
  /* A version-1 caller: whatever lies past its struct is not read. */
  memset(&o, 0xA5, sizeof o);
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, KEEL_NODE_OPTIONS_SIZE_V1));
  CHECK_EQ_U64(o.max_handshakes, 0xA5A5A5A5u);
  o.node_id = 5;
  CHECK_OK(keel_node_open(engine, &o, &node, &err));
  keel_node_stats_t s;
  memset(&s, 0xA5, sizeof s);
  s.struct_size = KEEL_NODE_STATS_SIZE_V1;
  CHECK_RC(KEEL_STATUS_OK, keel_node_stats(node, &s));
  CHECK_EQ_U64(s.refused_handshake_limit, 0xA5A5A5A5A5A5A5A5ull);
  s = stats_of(node);
  CHECK_EQ_U64(s.struct_size, KEEL_NODE_STATS_SIZE_V3);
  CHECK_EQ_U64(s.refused_handshake_limit, 0);
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(node, NULL));
}

/* A node's event callback that closes its own node gets BUSY and nothing
 * is done: the close would wait for, and join, the very thread the
 * callback runs on. The node stays usable and the host closes it. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  keel_node_t *node;
  int calls;
  keel_status_t close_rc;
} self_closer_t;

static void closes_its_node(void *user, uint64_t peer_id, keel_status_t status, const char *message) {
  self_closer_t *c = user;
  (void)peer_id;
  (void)message;
  if (status != KEEL_STATUS_OK) return; /* only the peer's ready event */
  pthread_mutex_lock(&c->mu);
  keel_node_t *node = c->node;
  pthread_mutex_unlock(&c->mu);
  keel_status_t rc = keel_node_close(node, NULL);
  pthread_mutex_lock(&c->mu);
  c->close_rc = rc;
  c->calls++;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void a_callback_cannot_close_its_own_node(keel_engine_t *engine) {
  KT_ERR;
  self_closer_t closer;
  memset(&closer, 0, sizeof closer);
  CHECK(pthread_mutex_init(&closer.mu, NULL) == 0);
  CHECK(pthread_cond_init(&closer.cv, NULL) == 0);
  keel_node_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  o.node_id = 1;
  o.close_timeout_ms = 0; /* a close from the callback waits for nothing */
  o.on_event = closes_its_node;
  o.user_data = &closer;
  keel_node_t *a = NULL;
  CHECK_OK(keel_node_open(engine, &o, &a, &err));
  pthread_mutex_lock(&closer.mu);
  closer.node = a;
  pthread_mutex_unlock(&closer.mu);
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  o.node_id = 2;
  keel_node_t *b = NULL;
  CHECK_OK(keel_node_open(engine, &o, &b, &err));
  char addr[64];
  addr_of(a, addr, sizeof addr);
  keel_status_t connect_rc = keel_node_connect(b, 1, addr, NULL);
  pthread_mutex_lock(&closer.mu);
  while (closer.calls < 1) pthread_cond_wait(&closer.cv, &closer.mu);
  pthread_mutex_unlock(&closer.mu);
  CHECK_RC(KEEL_STATUS_BUSY, closer.close_rc);
  CHECK_RC(KEEL_STATUS_OK, connect_rc);
  CHECK_EQ_U64(stats_of(a).peers, 1); /* nothing was closed */
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(b, NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(a, NULL));
  pthread_cond_destroy(&closer.cv);
  pthread_mutex_destroy(&closer.mu);
}

/* A peer that closes the connection before the handshake finished: the
 * dial fails with CLOSED, though this node is open and dials on. */
typedef struct {
  int listener;
  int conn;
} half_closer_t;

static void *accept_and_end_writing(void *arg) {
  half_closer_t *h = arg;
  h->conn = accept(h->listener, NULL, NULL);
  CHECK(h->conn >= 0);
  /* A FIN, not a reset: the HELLO it got stays unread until close(). */
  CHECK(shutdown(h->conn, SHUT_WR) == 0);
  return NULL;
}

static void a_peer_that_closes_in_the_handshake_is_closed(keel_engine_t *engine) {
  KT_ERR;
  half_closer_t h;
  h.listener = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(h.listener >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(h.listener, (struct sockaddr *)&sa, sizeof sa) == 0);
  CHECK(listen(h.listener, 1) == 0);
  socklen_t sl = sizeof sa;
  CHECK(getsockname(h.listener, (struct sockaddr *)&sa, &sl) == 0);
  char raw[64];
  snprintf(raw, sizeof raw, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
  pthread_t th;
  CHECK(pthread_create(&th, NULL, accept_and_end_writing, &h) == 0);

  events_t ea, eb;
  events_init(&ea);
  events_init(&eb);
  keel_node_t *a = open_node(engine, 1, SECRET, &ea);
  keel_node_t *b = open_node(engine, 2, SECRET, &eb);
  CHECK_RC(KEEL_STATUS_CLOSED, keel_node_connect(b, 7, raw, &err));
  CHECK(strstr(keel_error_message(err), "closed by the peer") != NULL);
  keel_error_free(err);
  err = NULL;
  CHECK(pthread_join(th, NULL) == 0);
  close(h.conn);
  close(h.listener);
  CHECK_EQ_U64(stats_of(b).closed_by_peer, 1);
  /* Not the node closing: the next dial goes through. */
  char addr[64];
  addr_of(a, addr, sizeof addr);
  CHECK_OK(keel_node_connect(b, 1, addr, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(b, NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(a, NULL));
  events_destroy(&ea);
  events_destroy(&eb);
}

/* Out of descriptors, opening a node (its listening socket) and dialing a
 * peer (the socket) fail with RESOURCE, and both work once descriptors
 * are free again. */
static void out_of_descriptors_is_resource(keel_engine_t *engine) {
  KT_ERR;
  keel_node_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  o.node_id = 1;
  keel_node_t *a = NULL, *b = NULL;
  CHECK_OK(keel_node_open(engine, &o, &a, &err));
  char addr[64];
  addr_of(a, addr, sizeof addr);
  o.node_id = 2;
  kt_fds_t fds;
  kt_fds_fill(&fds);
  keel_status_t open_rc = keel_node_open(engine, &o, &b, NULL);
  kt_fds_release(&fds);
  CHECK_RC(KEEL_STATUS_RESOURCE, open_rc);
  CHECK(b == NULL);
  CHECK_OK(keel_node_open(engine, &o, &b, &err));
  kt_fds_fill(&fds);
  keel_status_t connect_rc = keel_node_connect(b, 1, addr, NULL);
  kt_fds_release(&fds);
  CHECK_RC(KEEL_STATUS_RESOURCE, connect_rc);
  CHECK_OK(keel_node_connect(b, 1, addr, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(b, NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(a, NULL));
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_t *engine = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &engine, &err));
  two_nodes_with_a_secret_connect(engine);
  a_wrong_secret_is_refused_and_counted(engine);
  arguments_are_checked(engine);
  version_2_adds_the_handshake_bound(engine);
  a_callback_cannot_close_its_own_node(engine);
  a_peer_that_closes_in_the_handshake_is_closed(engine);
  out_of_descriptors_is_resource(engine);
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);
  printf("test_node: ok\n");
  return 0;
}
