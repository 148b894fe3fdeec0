// Every string the UI shows, per language. To add a language: copy the `en` block, translate it, add it to
// LANGUAGES. Placeholders are written {name}. Elements in the HTML carry data-i18n="key" (text) and
// data-i18n-attr="attr:key,attr:key" (attributes); applyI18n() fills them.

const en = {
  'app.tagline': 'Private chat and file transfer, straight from browser to browser.',
  'lang.label': 'Language',
  'theme.toggle': 'Switch light/dark theme',
  'theme.auto': 'Theme: automatic',
  'theme.light': 'Theme: light',
  'theme.dark': 'Theme: dark',
  'nav.diag': 'Diagnostics',
  'nav.back': 'Back',
  'nav.home': 'Conversations',

  'server.connecting': 'Connecting to server…',
  'server.online': 'Online',
  'server.offline': 'Offline — retrying in {s} s',
  'server.retrying': 'Reconnecting…',
  'server.offline_chats': 'Server offline (open chats keep working) — retrying in {s} s',
  'server.replaced': 'This ID is now open in another tab.',
  'server.new_id_button': 'Use a new ID here',
  'server.id_changed': 'The server restarted, so you have a new ID: {id}. Send it to your contacts again.',
  'server.unsupported': 'This page is out of date for the server. Reload the page.',
  'server.taken': 'ponte is open in another tab of this browser, which now has your ID.',
  'server.use_here': 'Use here',
  'me.lasting': 'This ID stays with this browser: same ID on every visit.',
  'me.one_time_insecure': 'One-time ID: this address is not secure (plain http), so the browser cannot keep a key. Open ponte over https to keep your ID.',
  'me.one_time_no_storage': 'One-time ID: this browser window cannot store data (private window?), so the ID ends with it.',
  'me.one_time_error': 'One-time ID: the browser could not make or read a key, so the ID ends with this page.',
  'me.one_time_refused': 'One-time ID: the server refused this browser\'s key, so the ID ends with this page.',
  'me.one_time_server': 'One-time ID: this server does not keep lasting IDs.',

  'me.title': 'Your ID',
  'me.hint': 'Give this ID or the link to the person you want to talk to.',
  'me.copy': 'Copy ID',
  'me.copied': 'Copied!',
  'me.copy_link': 'Copy link',
  'me.share': 'Share',
  'me.link_label': 'Share link',
  'me.qr': 'QR code',
  'me.qr_label': 'QR code of your share link',
  'me.share_text': 'Talk to me on ponte: {link}',
  'me.notifications': 'Notify me of requests',
  'me.notifications_on': 'Notifications on',
  'me.notifications_blocked': 'Notifications are blocked in this browser',

  'connect.title': 'Talk to someone',
  'connect.label': 'Their ID',
  'connect.placeholder': 'e.g. k7m2-x9p4',
  'connect.button': 'Connect',
  'connect.hint': '8 letters and digits; dashes, spaces and capitals don’t matter. A link works too.',
  'connect.bad_chars': '“{ch}” is not used in IDs (IDs never contain 0, o, 1, l or i).',
  'connect.bad_length': 'An ID has 8 characters.',
  'connect.waiting': 'Waiting for {id} to accept…',
  'connect.sending': 'Sending the request to {id}…',
  'connect.cancel': 'Cancel',
  'connect.cancelled': 'Request to {id} cancelled.',
  'connect.declined': '{id} declined your request.',
  'connect.timeout': '{id} didn’t answer in time.',
  'connect.left': '{id} left before answering.',
  'connect.unknown': 'Nobody with the ID {id} is online. Check the ID and ask them to keep the page open.',
  'connect.self': 'That’s your own ID. Enter the other person’s ID.',
  'connect.already': 'You are already talking to {id}.',
  'connect.duplicate': 'There is already a pending request between you and {id}.',
  'connect.rate': 'Too many requests. Wait a minute and try again.',
  'connect.offline': 'Not connected to the server yet. Try again in a moment.',

  'incoming.title': 'Chat request',
  'incoming.text': '{id} wants to chat with you.',
  'incoming.accept': 'Accept',
  'incoming.decline': 'Decline',
  'incoming.cancelled': '{id} withdrew the request.',
  'incoming.timeout': 'The request from {id} expired.',
  'incoming.left': '{id} left before you answered.',
  'incoming.notify_title': 'ponte: chat request',
  'incoming.notify_body': '{id} wants to chat with you.',

  'convs.title': 'Conversations',
  'convs.empty': 'No conversations yet.',
  'convs.unread': '{n} unread',

  'empty.title': 'Start a conversation',
  'empty.text': 'Share your ID, or type someone else’s. Messages and files go directly between the two browsers; this server only introduces you (and relays, encrypted, when there is no direct path).',

  'chat.placeholder': 'Write a message',
  'chat.placeholder_waiting': 'Write a message (sent once connected)',
  'chat.input_label': 'Message',
  'chat.send': 'Send',
  'chat.attach': 'Send a file',
  'chat.end': 'End chat',
  'chat.end_confirm': 'End the conversation with {id}?',
  'chat.typing': '{id} is typing…',
  'chat.you': 'You',
  'chat.messages_label': 'Messages with {id}',
  'chat.started': 'Connected. Say hi!',
  'chat.peer_left': '{id} ended the conversation.',
  'chat.peer_disconnected': '{id} left.',
  'chat.peer_away': '{id} lost the connection to the server; the chat may still work.',
  'chat.peer_back': '{id} is back.',
  'chat.peer_new_id': '{old} now has the ID {id} (the server restarted).',
  'chat.rejoined': 'The server restarted; reconnected with {id}.',
  'chat.drop': 'Drop a file to send it to {id}',
  'chat.not_connected': 'Not connected — messages will be sent when the connection is back.',
  'chat.closed': 'This conversation has ended.',
  'chat.remove': 'Close',
  'chat.file_preview': 'File: {name}',

  'status.queued': 'Waiting to send',
  'status.sent': 'Sent',
  'status.delivered': 'Delivered',

  'conn.state': 'Connection',
  'conn.connecting': 'Connecting…',
  'conn.connected': 'Connected',
  'conn.reconnecting': 'Reconnecting…',
  'conn.failed': 'Connection failed',
  'conn.closed': 'Ended',
  'conn.path': 'Path',
  'conn.path_unknown': '—',
  'conn.direct': 'Direct ({kind})',
  'conn.direct_host': 'local network',
  'conn.direct_srflx': 'through your routers',
  'conn.relayed': 'Relayed through this server (TURN {proto})',
  'conn.relayed_remote': 'Relayed through this server (TURN {proto}, on {id}’s side)',
  'conn.relayed_remote_unknown': 'Relayed through this server (on {id}’s side)',
  'conn.rtt': 'Round trip',
  'conn.rtt_ms': '{ms} ms',
  'conn.security': 'Security code',
  'conn.security_hint': 'Compare this code with {id} (in person or by phone). If it matches on both screens, nobody is in the middle.',
  'conn.retry': 'Try again',
  'conn.details': 'Connection details',
  'conn.encrypted': 'End-to-end encrypted (DTLS)',

  'fail.no_turn': 'No path between you and {id} could be found. Your networks don’t allow a direct connection (one of you is probably behind a strict NAT or firewall), and this server has no relay (TURN) turned on to carry the traffic.',
  'fail.turn_unreachable': 'No path between you and {id} could be found. The relay on this server could not be reached ({urls}) — UDP and TCP port 3478 may be blocked on your network — and a direct connection isn’t possible.',
  'fail.turn_refused': 'The relay on this server refused the connection (credentials or policy). Reload the page to get fresh credentials; if it keeps happening, tell the server’s admin.',
  'fail.no_remote': 'Nothing arrived from {id}’s browser. They may have lost their connection to the server.',
  'fail.relay_no_path': 'You reached the relay, but the connection with {id} still failed. Their network may block the relay, or the relay refused to forward to them.',
  'fail.check_diag': 'Run the diagnostics to see what works from here.',

  'file.offer': 'wants to send you a file',
  'file.accept': 'Accept',
  'file.decline': 'Decline',
  'file.cancel': 'Cancel',
  'file.waiting': 'Waiting for {id} to accept…',
  'file.sending': 'Sending…',
  'file.receiving': 'Receiving…',
  'file.verifying': 'Checking integrity…',
  'file.done_out': 'Delivered and verified',
  'file.done_in': 'Received and verified',
  'file.download': 'Save file',
  'file.declined': 'Declined',
  'file.cancelled': 'Cancelled',
  'file.failed': 'Failed',
  'file.err_integrity': 'Failed: the file arrived damaged',
  'file.err_connection_lost': 'Failed: the connection was lost',
  'file.err_not_connected': 'Not connected',
  'file.progress': '{done} of {total}',
  'file.speed': '{rate}/s',
  'file.progress_label': 'Transfer progress of {name}',

  'time.now': 'now',

  'diag.title': 'Connection diagnostics',
  'diag.intro': 'Checks whether this browser can reach the server, its STUN service and its TURN relay — like a trickle-ICE test aimed at this server. Nothing is sent to anybody else.',
  'diag.run': 'Run the checks again',
  'diag.back': 'Back to chat',
  'diag.running': 'Checking…',
  'diag.ok': 'Works',
  'diag.fail': 'Doesn’t work',
  'diag.skip': 'Not offered by this server',
  'diag.ws': 'Signaling (WebSocket)',
  'diag.ws_ok': 'Reached {url} and got an ID in {ms} ms.',
  'diag.ws_fail': 'Could not open {url}. A proxy or firewall may block WebSockets.',
  'diag.host': 'Local addresses',
  'diag.host_ok': '{n} local candidate(s).',
  'diag.host_fail': 'The browser offered no local address (privacy settings?).',
  'diag.stun': 'STUN ({url})',
  'diag.stun_ok': 'Your public address as seen by the server: {addr}.',
  'diag.stun_fail': 'No answer from STUN. UDP to port {port} is probably blocked.',
  'diag.turn': 'TURN relay ({url})',
  'diag.turn_tls': 'TURN relay over TLS (turns:)',
  'diag.turn_ok': 'Got a relay address {addr} ({ms} ms).',
  'diag.turn_fail': 'No relay address. {why}',
  'diag.turn_why_unreachable': 'The relay could not be reached over {proto} on port {port}.',
  'diag.turn_why_auth': 'The relay refused the credentials ({code}).',
  'diag.turn_why_none': 'Nothing came back within {s} seconds.',
  'diag.summary_good': 'Everything works: direct connections are possible and the relay is there when they aren’t.',
  'diag.summary_relay_only': 'The relay works, so chats will connect, possibly relayed through this server.',
  'diag.summary_direct_only': 'Direct connections may work, but the relay is unreachable: people behind strict NATs won’t be able to reach you.',
  'diag.summary_bad': 'Neither STUN nor the relay could be reached: connections will only work on the same local network.',
  'diag.summary_ws_bad': 'The signaling server could not be reached, so nothing else can work from here.',
  'diag.relay_needed': 'Needs the relay',
  'diag.nat': 'Your NAT (direct connections)',
  'diag.nat_independent': 'Your network keeps the same public port whatever the destination: direct connections are possible.',
  'diag.nat_dependent': 'Your network picks a new public port for every destination (symmetric NAT): direct connections will not work from here, your network needs the relay.',
  'diag.nat_one_port': 'Cannot tell: this server offers one STUN port (the owner can add turn.stun_alt_listen).',
  'diag.nat_unknown': 'Cannot tell: not both STUN ports answered.',
  'diag.summary_udp_blocked': 'UDP is blocked here: only the TCP/TLS relay works. Chats still connect, relayed through this server.',
  'diag.summary_symmetric': 'Your network needs the relay: it is a symmetric NAT, so direct connections will not work, but the relay works and chats will connect through this server.',
  'diag.summary_symmetric_no_relay': 'Your network needs the relay (symmetric NAT), and the relay cannot be reached: connections from here will fail.',
  'diag.candidates': 'Candidates gathered',
  'diag.col_type': 'Type',
  'diag.col_proto': 'Protocol',
  'diag.col_addr': 'Address',
  'diag.col_server': 'Server',
};

const ptBR = {
  'app.tagline': 'Conversa e envio de arquivos privados, direto de navegador para navegador.',
  'lang.label': 'Idioma',
  'theme.toggle': 'Alternar tema claro/escuro',
  'theme.auto': 'Tema: automático',
  'theme.light': 'Tema: claro',
  'theme.dark': 'Tema: escuro',
  'nav.diag': 'Diagnóstico',
  'nav.back': 'Voltar',
  'nav.home': 'Conversas',

  'server.connecting': 'Conectando ao servidor…',
  'server.online': 'Conectado',
  'server.offline': 'Sem conexão — nova tentativa em {s} s',
  'server.retrying': 'Reconectando…',
  'server.offline_chats': 'Servidor fora do ar (as conversas abertas continuam) — nova tentativa em {s} s',
  'server.replaced': 'Este ID agora está aberto em outra aba.',
  'server.new_id_button': 'Usar um novo ID aqui',
  'server.id_changed': 'O servidor reiniciou e você tem um novo ID: {id}. Envie-o de novo aos seus contatos.',
  'server.unsupported': 'Esta página está desatualizada para o servidor. Recarregue a página.',
  'server.taken': 'O ponte está aberto em outra aba deste navegador, que agora tem o seu ID.',
  'server.use_here': 'Usar aqui',
  'me.lasting': 'Este ID fica com este navegador: o mesmo ID a cada visita.',
  'me.one_time_insecure': 'ID temporário: este endereço não é seguro (http simples), então o navegador não pode guardar uma chave. Abra o ponte por https para manter o seu ID.',
  'me.one_time_no_storage': 'ID temporário: esta janela não pode guardar dados (janela privada?), então o ID termina com ela.',
  'me.one_time_error': 'ID temporário: o navegador não conseguiu criar ou ler uma chave, então o ID termina com esta página.',
  'me.one_time_refused': 'ID temporário: o servidor recusou a chave deste navegador, então o ID termina com esta página.',
  'me.one_time_server': 'ID temporário: este servidor não guarda IDs permanentes.',

  'me.title': 'Seu ID',
  'me.hint': 'Passe este ID ou o link para quem você quer conversar.',
  'me.copy': 'Copiar ID',
  'me.copied': 'Copiado!',
  'me.copy_link': 'Copiar link',
  'me.share': 'Compartilhar',
  'me.link_label': 'Link para compartilhar',
  'me.qr': 'QR code',
  'me.qr_label': 'QR code do seu link',
  'me.share_text': 'Fale comigo no ponte: {link}',
  'me.notifications': 'Avisar sobre pedidos',
  'me.notifications_on': 'Notificações ativadas',
  'me.notifications_blocked': 'Notificações bloqueadas neste navegador',

  'connect.title': 'Conversar com alguém',
  'connect.label': 'ID da pessoa',
  'connect.placeholder': 'ex.: k7m2-x9p4',
  'connect.button': 'Conectar',
  'connect.hint': '8 letras e números; traços, espaços e maiúsculas não importam. Um link também serve.',
  'connect.bad_chars': '“{ch}” não é usado em IDs (IDs nunca têm 0, o, 1, l ou i).',
  'connect.bad_length': 'Um ID tem 8 caracteres.',
  'connect.waiting': 'Esperando {id} aceitar…',
  'connect.sending': 'Enviando o pedido para {id}…',
  'connect.cancel': 'Cancelar',
  'connect.cancelled': 'Pedido para {id} cancelado.',
  'connect.declined': '{id} recusou o seu pedido.',
  'connect.timeout': '{id} não respondeu a tempo.',
  'connect.left': '{id} saiu antes de responder.',
  'connect.unknown': 'Ninguém com o ID {id} está on-line. Confira o ID e peça para a pessoa manter a página aberta.',
  'connect.self': 'Esse é o seu próprio ID. Digite o ID da outra pessoa.',
  'connect.already': 'Você já está conversando com {id}.',
  'connect.duplicate': 'Já existe um pedido pendente entre você e {id}.',
  'connect.rate': 'Pedidos demais. Espere um minuto e tente de novo.',
  'connect.offline': 'Ainda sem conexão com o servidor. Tente de novo daqui a pouco.',

  'incoming.title': 'Pedido de conversa',
  'incoming.text': '{id} quer conversar com você.',
  'incoming.accept': 'Aceitar',
  'incoming.decline': 'Recusar',
  'incoming.cancelled': '{id} retirou o pedido.',
  'incoming.timeout': 'O pedido de {id} expirou.',
  'incoming.left': '{id} saiu antes da sua resposta.',
  'incoming.notify_title': 'ponte: pedido de conversa',
  'incoming.notify_body': '{id} quer conversar com você.',

  'convs.title': 'Conversas',
  'convs.empty': 'Nenhuma conversa ainda.',
  'convs.unread': '{n} não lidas',

  'empty.title': 'Comece uma conversa',
  'empty.text': 'Compartilhe o seu ID ou digite o de outra pessoa. Mensagens e arquivos vão direto entre os dois navegadores; este servidor só apresenta vocês (e retransmite, criptografado, quando não há caminho direto).',

  'chat.placeholder': 'Escreva uma mensagem',
  'chat.placeholder_waiting': 'Escreva uma mensagem (enviada ao conectar)',
  'chat.input_label': 'Mensagem',
  'chat.send': 'Enviar',
  'chat.attach': 'Enviar um arquivo',
  'chat.end': 'Encerrar',
  'chat.end_confirm': 'Encerrar a conversa com {id}?',
  'chat.typing': '{id} está digitando…',
  'chat.you': 'Você',
  'chat.messages_label': 'Mensagens com {id}',
  'chat.started': 'Conectado. Diga oi!',
  'chat.peer_left': '{id} encerrou a conversa.',
  'chat.peer_disconnected': '{id} saiu.',
  'chat.peer_away': '{id} perdeu a conexão com o servidor; a conversa ainda pode funcionar.',
  'chat.peer_back': '{id} voltou.',
  'chat.peer_new_id': '{old} agora tem o ID {id} (o servidor reiniciou).',
  'chat.rejoined': 'O servidor reiniciou; conexão com {id} refeita.',
  'chat.drop': 'Solte um arquivo para enviá-lo a {id}',
  'chat.not_connected': 'Sem conexão — as mensagens serão enviadas quando a conexão voltar.',
  'chat.closed': 'Esta conversa foi encerrada.',
  'chat.remove': 'Fechar',
  'chat.file_preview': 'Arquivo: {name}',

  'status.queued': 'Aguardando envio',
  'status.sent': 'Enviada',
  'status.delivered': 'Entregue',

  'conn.state': 'Conexão',
  'conn.connecting': 'Conectando…',
  'conn.connected': 'Conectado',
  'conn.reconnecting': 'Reconectando…',
  'conn.failed': 'A conexão falhou',
  'conn.closed': 'Encerrada',
  'conn.path': 'Caminho',
  'conn.path_unknown': '—',
  'conn.direct': 'Direto ({kind})',
  'conn.direct_host': 'rede local',
  'conn.direct_srflx': 'através dos roteadores',
  'conn.relayed': 'Retransmitido por este servidor (TURN {proto})',
  'conn.relayed_remote': 'Retransmitido por este servidor (TURN {proto}, do lado de {id})',
  'conn.relayed_remote_unknown': 'Retransmitido por este servidor (do lado de {id})',
  'conn.rtt': 'Ida e volta',
  'conn.rtt_ms': '{ms} ms',
  'conn.security': 'Código de segurança',
  'conn.security_hint': 'Compare este código com {id} (pessoalmente ou por telefone). Se for igual nas duas telas, ninguém está no meio.',
  'conn.retry': 'Tentar de novo',
  'conn.details': 'Detalhes da conexão',
  'conn.encrypted': 'Criptografia ponta a ponta (DTLS)',

  'fail.no_turn': 'Não foi possível achar um caminho entre você e {id}. As suas redes não permitem conexão direta (provavelmente um de vocês está atrás de um NAT restrito ou firewall) e este servidor não tem o retransmissor (TURN) ligado.',
  'fail.turn_unreachable': 'Não foi possível achar um caminho entre você e {id}. O retransmissor deste servidor não pôde ser alcançado ({urls}) — as portas UDP e TCP 3478 podem estar bloqueadas na sua rede — e a conexão direta não é possível.',
  'fail.turn_refused': 'O retransmissor deste servidor recusou a conexão (credenciais ou política). Recarregue a página para obter credenciais novas; se continuar, avise o administrador.',
  'fail.no_remote': 'Nada chegou do navegador de {id}. A pessoa pode ter perdido a conexão com o servidor.',
  'fail.relay_no_path': 'Você alcançou o retransmissor, mas a conexão com {id} falhou mesmo assim. A rede da outra pessoa pode bloquear o retransmissor.',
  'fail.check_diag': 'Rode o diagnóstico para ver o que funciona daqui.',

  'file.offer': 'quer enviar um arquivo para você',
  'file.accept': 'Aceitar',
  'file.decline': 'Recusar',
  'file.cancel': 'Cancelar',
  'file.waiting': 'Esperando {id} aceitar…',
  'file.sending': 'Enviando…',
  'file.receiving': 'Recebendo…',
  'file.verifying': 'Verificando a integridade…',
  'file.done_out': 'Entregue e verificado',
  'file.done_in': 'Recebido e verificado',
  'file.download': 'Salvar arquivo',
  'file.declined': 'Recusado',
  'file.cancelled': 'Cancelado',
  'file.failed': 'Falhou',
  'file.err_integrity': 'Falhou: o arquivo chegou corrompido',
  'file.err_connection_lost': 'Falhou: a conexão caiu',
  'file.err_not_connected': 'Sem conexão',
  'file.progress': '{done} de {total}',
  'file.speed': '{rate}/s',
  'file.progress_label': 'Progresso da transferência de {name}',

  'time.now': 'agora',

  'diag.title': 'Diagnóstico da conexão',
  'diag.intro': 'Verifica se este navegador alcança o servidor, o serviço STUN e o retransmissor TURN — como um teste trickle-ICE apontado para este servidor. Nada é enviado para mais ninguém.',
  'diag.run': 'Verificar de novo',
  'diag.back': 'Voltar para a conversa',
  'diag.running': 'Verificando…',
  'diag.ok': 'Funciona',
  'diag.fail': 'Não funciona',
  'diag.skip': 'Não oferecido por este servidor',
  'diag.ws': 'Sinalização (WebSocket)',
  'diag.ws_ok': 'Alcançou {url} e recebeu um ID em {ms} ms.',
  'diag.ws_fail': 'Não foi possível abrir {url}. Um proxy ou firewall pode estar bloqueando WebSockets.',
  'diag.host': 'Endereços locais',
  'diag.host_ok': '{n} candidato(s) local(is).',
  'diag.host_fail': 'O navegador não ofereceu nenhum endereço local (configurações de privacidade?).',
  'diag.stun': 'STUN ({url})',
  'diag.stun_ok': 'Seu endereço público visto pelo servidor: {addr}.',
  'diag.stun_fail': 'Sem resposta do STUN. O UDP para a porta {port} provavelmente está bloqueado.',
  'diag.turn': 'Retransmissor TURN ({url})',
  'diag.turn_tls': 'Retransmissor TURN sobre TLS (turns:)',
  'diag.turn_ok': 'Recebeu o endereço de retransmissão {addr} ({ms} ms).',
  'diag.turn_fail': 'Nenhum endereço de retransmissão. {why}',
  'diag.turn_why_unreachable': 'O retransmissor não pôde ser alcançado por {proto} na porta {port}.',
  'diag.turn_why_auth': 'O retransmissor recusou as credenciais ({code}).',
  'diag.turn_why_none': 'Nada voltou em {s} segundos.',
  'diag.summary_good': 'Tudo funciona: conexões diretas são possíveis e o retransmissor está lá quando não forem.',
  'diag.summary_relay_only': 'O retransmissor funciona, então as conversas vão conectar, talvez retransmitidas por este servidor.',
  'diag.summary_direct_only': 'Conexões diretas podem funcionar, mas o retransmissor está inalcançável: quem estiver atrás de NAT restrito não vai conseguir falar com você.',
  'diag.summary_bad': 'Nem o STUN nem o retransmissor puderam ser alcançados: as conexões só vão funcionar na mesma rede local.',
  'diag.summary_ws_bad': 'O servidor de sinalização não pôde ser alcançado, então nada mais funciona daqui.',
  'diag.relay_needed': 'Precisa do retransmissor',
  'diag.nat': 'Seu NAT (conexões diretas)',
  'diag.nat_independent': 'Sua rede mantém a mesma porta pública para qualquer destino: conexões diretas são possíveis.',
  'diag.nat_dependent': 'Sua rede escolhe uma porta pública nova para cada destino (NAT simétrico): conexões diretas não vão funcionar daqui, sua rede precisa do retransmissor.',
  'diag.nat_one_port': 'Não dá para saber: este servidor oferece uma só porta STUN (o dono pode ativar turn.stun_alt_listen).',
  'diag.nat_unknown': 'Não dá para saber: as duas portas STUN não responderam.',
  'diag.summary_udp_blocked': 'O UDP está bloqueado aqui: só o retransmissor por TCP/TLS funciona. As conversas conectam mesmo assim, retransmitidas por este servidor.',
  'diag.summary_symmetric': 'Sua rede precisa do retransmissor: é um NAT simétrico, então conexões diretas não vão funcionar, mas o retransmissor funciona e as conversas vão conectar por este servidor.',
  'diag.summary_symmetric_no_relay': 'Sua rede precisa do retransmissor (NAT simétrico), e ele não pôde ser alcançado: as conexões daqui vão falhar.',
  'diag.candidates': 'Candidatos coletados',
  'diag.col_type': 'Tipo',
  'diag.col_proto': 'Protocolo',
  'diag.col_addr': 'Endereço',
  'diag.col_server': 'Servidor',
};

export const LANGUAGES = {
  en: { name: 'English', strings: en },
  'pt-BR': { name: 'Português (Brasil)', strings: ptBR },
};

const LANG_KEY = 'ponte.lang';
let current = 'en';

/** The language to use: a saved choice, else the first browser language we have (pt-* → pt-BR), else English. */
export function detectLanguage() {
  try {
    const saved = localStorage.getItem(LANG_KEY);
    if (saved && LANGUAGES[saved]) return saved;
  } catch { /* storage disabled */ }
  for (const l of navigator.languages || [navigator.language || 'en']) {
    if (LANGUAGES[l]) return l;
    const base = String(l).split('-')[0].toLowerCase();
    const match = Object.keys(LANGUAGES).find((k) => k.split('-')[0].toLowerCase() === base);
    if (match) return match;
  }
  return 'en';
}

export function setLanguage(lang, save = false) {
  current = LANGUAGES[lang] ? lang : 'en';
  document.documentElement.lang = current;
  if (save) {
    try { localStorage.setItem(LANG_KEY, current); } catch { /* ignore */ }
  }
  applyI18n(document);
  document.dispatchEvent(new CustomEvent('languagechange'));
}

export function language() {
  return current;
}

/** Translate `key`, filling {placeholders} from `vars`. Unknown keys fall back to English, then to the key. */
export function t(key, vars) {
  const s = LANGUAGES[current].strings[key] ?? en[key] ?? key;
  if (!vars) return s;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}

export function applyI18n(root) {
  root.querySelectorAll('[data-i18n]').forEach((el) => {
    el.textContent = t(el.dataset.i18n);
  });
  root.querySelectorAll('[data-i18n-attr]').forEach((el) => {
    for (const pair of el.dataset.i18nAttr.split(',')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  });
}

/** A language picker <select>. */
export function fillLanguageSelect(select) {
  select.replaceChildren();
  for (const [code, { name }] of Object.entries(LANGUAGES)) {
    const o = document.createElement('option');
    o.value = code;
    o.textContent = name;
    select.append(o);
  }
  select.value = current;
  select.addEventListener('change', () => setLanguage(select.value, true));
}
